"""The forwarder's own tables inside the outbox file, and its status report.

The outbox is an ordinary lightning-otlp SQLite store: its ``spans`` table holds exactly the
spans not yet delivered (a delivered span's row is deleted in the transaction that records the
delivery). These tables add what forwarding needs to survive a restart: the local -> server id
mapping, what was mirrored, delivery counters and the last error.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Final

# Created with IF NOT EXISTS so the embedded store's own migrations stay independent of them.
SCHEMA: Final[tuple[str, ...]] = (
    # Local rollout -> server rollout. server_rollout_id is NULL while a creation request is in
    # doubt; ``link`` (also written into the server rollout's metadata) finds it again.
    """CREATE TABLE IF NOT EXISTS forward_rollouts (
        rollout_id        TEXT PRIMARY KEY,
        server_rollout_id TEXT,
        spare_attempt_id  TEXT,
        link              TEXT NOT NULL,
        requested         REAL NOT NULL,
        mirrored_status   TEXT
    )""",
    # Local attempt -> server attempt. known_attempts: the server's attempt count before a
    # creation request, so a request in doubt can be recognised after a crash.
    """CREATE TABLE IF NOT EXISTS forward_attempts (
        rollout_id        TEXT NOT NULL,
        attempt_id        TEXT NOT NULL,
        server_attempt_id TEXT,
        known_attempts    INTEGER,
        mirrored_status   TEXT,
        PRIMARY KEY (rollout_id, attempt_id)
    )""",
    # One row per committed request: the highest span rowid it wrote and when, for the age of
    # the oldest pending span (spans carry no arrival time of their own).
    """CREATE TABLE IF NOT EXISTS forward_marks (
        max_rowid INTEGER PRIMARY KEY,
        time      REAL NOT NULL
    )""",
    # Trace -> the explicit rollout and attempt its delivered spans went to: delivered spans
    # leave the outbox, and trace affinity must outlive them across a restart.
    """CREATE TABLE IF NOT EXISTS forward_traces (
        trace_id   BLOB PRIMARY KEY,
        rollout_id TEXT NOT NULL,
        attempt_id TEXT NOT NULL,
        time       REAL NOT NULL
    ) WITHOUT ROWID""",
    # Spans the server refused for good (a 4xx on their own): kept, not retried, not lost.
    """CREATE TABLE IF NOT EXISTS forward_rejected (
        rollout_id  TEXT NOT NULL,
        attempt_id  TEXT NOT NULL,
        sequence_id INTEGER NOT NULL,
        trace_id    BLOB NOT NULL,
        span_id     BLOB NOT NULL,
        span        BLOB NOT NULL,
        resource_id TEXT NOT NULL,
        error       TEXT NOT NULL,
        time        REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS forward_state (
        id                 INTEGER PRIMARY KEY CHECK (id = 1),
        server             TEXT,
        forwarded_spans    INTEGER NOT NULL DEFAULT 0,
        forwarded_requests INTEGER NOT NULL DEFAULT 0,
        rollouts_created   INTEGER NOT NULL DEFAULT 0,
        rollouts_recreated INTEGER NOT NULL DEFAULT 0,
        status_updates     INTEGER NOT NULL DEFAULT 0,
        last_forward_time  REAL,
        last_error         TEXT,
        last_error_time    REAL
    )""",
    "INSERT OR IGNORE INTO forward_state (id) VALUES (1)",
)

_STATE_COLUMNS: Final = (
    "server, forwarded_spans, forwarded_requests, rollouts_created, rollouts_recreated,"
    " status_updates, last_forward_time, last_error, last_error_time"
)


def create_schema(conn: sqlite3.Connection) -> None:
    """Add the forwarder's tables to an open outbox, in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in SCHEMA:
            conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def pending(conn: sqlite3.Connection) -> tuple[int, int]:
    """(spans, bytes) waiting in the outbox; a full count, so not for the hot path."""
    count, size = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(length(span)), 0) FROM spans"
    ).fetchone()
    return int(count), int(size)


def oldest_pending_time(conn: sqlite3.Connection) -> float | None:
    row = conn.execute(
        "SELECT time FROM forward_marks WHERE max_rowid >= (SELECT MIN(rowid) FROM spans)"
        " ORDER BY max_rowid LIMIT 1"
    ).fetchone()
    return None if row is None else float(row[0])


def read_status(conn: sqlite3.Connection, now: float | None = None) -> dict[str, Any]:
    """Everything ``lightning-otlp status`` reports, from the file alone (no network)."""
    now = time.time() if now is None else now
    spans, size = pending(conn)
    row = conn.execute(f"SELECT {_STATE_COLUMNS} FROM forward_state WHERE id = 1").fetchone()
    names = [c.strip() for c in _STATE_COLUMNS.split(",")]
    state: dict[str, Any] = dict(zip(names, row, strict=True)) if row else {}
    oldest = oldest_pending_time(conn) if spans else None
    mapped = conn.execute(
        "SELECT COUNT(*) FROM forward_rollouts WHERE server_rollout_id IS NOT NULL"
    ).fetchone()[0]
    rejected = conn.execute("SELECT COUNT(*) FROM forward_rejected").fetchone()[0]
    return {
        "server": state.get("server"),
        "pending_spans": spans,
        "pending_bytes": size,
        "oldest_pending_age_seconds": None if oldest is None else round(max(0.0, now - oldest), 3),
        "forwarded_spans": state.get("forwarded_spans", 0),
        "rejected_spans": rejected,
        "forwarded_requests": state.get("forwarded_requests", 0),
        "rollouts_mapped": mapped,
        "rollouts_created": state.get("rollouts_created", 0),
        "rollouts_recreated": state.get("rollouts_recreated", 0),
        "status_updates": state.get("status_updates", 0),
        "last_forward_time": state.get("last_forward_time"),
        "last_error": state.get("last_error"),
        "last_error_time": state.get("last_error_time"),
    }
