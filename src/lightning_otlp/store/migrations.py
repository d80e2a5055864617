"""Schema changes as one ordered, recorded list per backend, applied on open.

Each ``Migration`` is applied once, in its own transaction, and recorded by name in
``schema_migrations``; a table's DDL is written once, in the migration that creates it, by the
module that owns the table (the outbox's are ``forward/``'s, each part's own, passed in by
``forward/outbox.py``).
Stores written before the list was recorded counted their steps in ``PRAGMA user_version``
(the receiver's tables) and ``agl_api_schema`` (the LightningStore API's): those counts are
read once, and the steps they cover recorded as applied.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Final, NamedTuple

from .api_schema import API_MIGRATIONS
from .db import transaction
from .records import ENCLOSING_MIGRATION


class Migration(NamedTuple):
    """One schema step; ``script``'s statements are split on ";", so comments in it must not
    contain one."""

    name: str
    script: str


# The receiver's own tables; ``PRAGMA user_version`` counted these before names were recorded.
INGEST: Final[tuple[Migration, ...]] = (
    Migration(
        "spans",
        """
        CREATE TABLE rollouts (
            rollout_id   TEXT PRIMARY KEY,
            input        TEXT,
            start_time   REAL NOT NULL,
            end_time     REAL,
            mode         TEXT,
            resources_id TEXT,
            status       TEXT NOT NULL,
            config       TEXT NOT NULL,
            metadata     TEXT,
            origin       TEXT NOT NULL
        );
        CREATE TABLE attempts (
            rollout_id          TEXT NOT NULL REFERENCES rollouts (rollout_id),
            attempt_id          TEXT NOT NULL,
            sequence_id         INTEGER NOT NULL,
            start_time          REAL NOT NULL,
            end_time            REAL,
            status              TEXT NOT NULL,
            worker_id           TEXT,
            last_heartbeat_time REAL,
            metadata            TEXT,
            next_span_seq       INTEGER NOT NULL DEFAULT 1,
            PRIMARY KEY (rollout_id, attempt_id)
        );
        CREATE TABLE resources (
            resource_id TEXT PRIMARY KEY,
            body        TEXT NOT NULL
        );
        CREATE TABLE spans (
            rollout_id  TEXT NOT NULL,
            attempt_id  TEXT NOT NULL,
            sequence_id INTEGER NOT NULL,
            trace_id    BLOB NOT NULL,
            span_id     BLOB NOT NULL,
            parent_id   BLOB,
            name        TEXT NOT NULL,
            start_time  REAL,
            end_time    REAL,
            status_code TEXT NOT NULL,
            span        BLOB NOT NULL,  -- the OTLP Span message as received
            resource_id TEXT NOT NULL
        );
        -- A span is identified by (trace_id, span_id) within its rollout. Leading with the
        -- rollout keeps each request's index writes on a few pages. A global (trace_id,
        -- span_id) index scatters them over the whole file and halves the insert rate once it
        -- outgrows the cache.
        CREATE UNIQUE INDEX spans_identity ON spans (rollout_id, trace_id, span_id);
        """,
    ),
    Migration("attempt-reward", "ALTER TABLE attempts ADD COLUMN reward REAL"),
    Migration("rollout-created-at", "ALTER TABLE rollouts ADD COLUMN created_at REAL"),
    # GenAI log records (message content) keyed by the span they belong to, whichever of the
    # two arrives first; joined onto the span when it is read. ``digest`` makes a retry a no-op.
    Migration(
        "span-logs",
        """
        CREATE TABLE span_logs (
            trace_id BLOB NOT NULL,
            span_id  BLOB NOT NULL,
            digest   BLOB NOT NULL,
            time     REAL,
            record   BLOB NOT NULL  -- the OTLP LogRecord message as received
        );
        CREATE UNIQUE INDEX span_logs_identity ON span_logs (trace_id, span_id, digest)
        """,
    ),
    # Each OTLP span's record as JSON, built in the background for fast reads (``store.views``).
    Migration(
        "span-views",
        """
        CREATE TABLE span_views (
            span_rowid INTEGER PRIMARY KEY,
            version    INTEGER NOT NULL,
            span_id    BLOB NOT NULL,
            body       BLOB NOT NULL
        )
        """,
    ),
    # Sequence ids taken in an attempt: by stored spans, and issued by ``spans/next`` for spans
    # still to come. A start-time id steps past both, so ids the store issues never repeat.
    Migration(
        "span-sequence",
        """
        CREATE INDEX spans_sequence ON spans (rollout_id, attempt_id, sequence_id);
        CREATE TABLE span_issued (
            rollout_id  TEXT NOT NULL,
            attempt_id  TEXT NOT NULL,
            sequence_id INTEGER NOT NULL,
            PRIMARY KEY (rollout_id, attempt_id, sequence_id)
        ) WITHOUT ROWID
        """,
    ),
    # Spans with model-call children, which are never calls themselves (``store.records``).
    Migration("span-encloses-calls", ENCLOSING_MIGRATION),
    # A view names its span's rollout, as PostgreSQL's must (its key leads with it), so the
    # shared SQL reads both alike. Views of spans no longer there go.
    Migration(
        "span-views-rollout",
        """
        ALTER TABLE span_views ADD COLUMN rollout_id TEXT;
        UPDATE span_views SET rollout_id =
            (SELECT s.rollout_id FROM spans s WHERE s.rowid = span_views.span_rowid);
        DELETE FROM span_views WHERE rollout_id IS NULL
        """,
    ),
)
# The LightningStore API's tables; ``agl_api_schema`` counted these before.
API: Final[tuple[Migration, ...]] = tuple(
    Migration(f"lightning-api-{number}", script)
    for number, script in enumerate(API_MIGRATIONS, start=1)
)
# Every SQLite store's list: an outbox adds its own tables after these.
SQLITE: Final[tuple[Migration, ...]] = INGEST + API


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration]) -> None:
    """Apply, in order, each migration not yet recorded, each in its own transaction."""
    with transaction(conn):
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations"
            " (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        applied = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
        if not applied:
            applied = _adopt(conn)
    for migration in migrations:
        if migration.name in applied:
            continue
        with transaction(conn):
            for statement in migration.script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            _record(conn, migration.name)


def applied(conn: sqlite3.Connection) -> list[str]:
    """The names recorded, in the order they were applied."""
    return [row[0] for row in conn.execute("SELECT name FROM schema_migrations ORDER BY rowid")]


def _adopt(conn: sqlite3.Connection) -> set[str]:
    """Record what a store written before names were recorded has already applied."""
    done = list(INGEST[: conn.execute("PRAGMA user_version").fetchone()[0]])
    if conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'agl_api_schema'"
    ).fetchone():
        row = conn.execute("SELECT version FROM agl_api_schema").fetchone()
        done += API[: row[0] if row else 0]
    for migration in done:
        _record(conn, migration.name)
    return {m.name for m in done}


def _record(conn: sqlite3.Connection, name: str) -> None:
    conn.execute(
        "INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)", (name, time.time())
    )
