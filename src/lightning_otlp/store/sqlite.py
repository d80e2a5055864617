"""The embedded store: one SQLite file in WAL mode, one transaction per request."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any, Final

from ..errors import StoreUnavailable
from ..ids import attempt_id_for
from ..records import (
    ATTEMPT_COLUMNS,
    DEFAULT_ROLLOUT_CONFIG,
    ROLLOUT_COLUMNS,
    SPAN_COLUMNS,
    attempted_rollout_record,
    span_record,
)
from ..route import RolloutInfo, SpanBatch
from .base import WriteResult

# Each entry is one migration, applied in its own transaction. PRAGMA user_version counts them.
# Statements are split on ";", so comments inside them must not contain one.
MIGRATIONS: Final[tuple[str, ...]] = (
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
    -- A span is identified by (trace_id, span_id) within its rollout. Leading with the rollout
    -- keeps each request's index writes on a few pages. A global (trace_id, span_id) index
    -- scatters them over the whole file and halves the insert rate once it outgrows the cache.
    CREATE UNIQUE INDEX spans_identity ON spans (rollout_id, trace_id, span_id);
    """,
)

_INSERT_SPAN: Final = f"INSERT OR IGNORE INTO spans ({SPAN_COLUMNS}) VALUES ({', '.join('?' * 12)})"
_DEFAULT_CONFIG_JSON: Final = json.dumps(DEFAULT_ROLLOUT_CONFIG)
_STARTED: Final = ("queuing", "preparing", "requeuing")


class SQLiteStore:
    """SQLite-backed store; ``path`` may be ``:memory:`` for tests.

    Args:
        path: database file, created with its schema on first open.
        synchronous: SQLite's ``synchronous`` pragma; ``FULL`` survives power loss,
            ``NORMAL`` survives a crash of this process only.
        busy_timeout: seconds to wait for a lock before answering "unavailable".
    """

    def __init__(
        self,
        path: str,
        *,
        synchronous: str = "FULL",
        busy_timeout: float = 2.0,
        url: str | None = None,
    ) -> None:
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
        self.path = path
        self.url = url or f"sqlite:///{path}"
        self._synchronous = synchronous.upper()
        self._busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        if self._conn is not None:
            return
        if self.path != ":memory:":
            parent = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(parent, exist_ok=True)
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute("PRAGMA foreign_keys=OFF")
            self._migrate(conn)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open {self.url}: {exc}") from exc
        self._conn = conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def ready(self) -> bool:
        return self._conn is not None

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={number}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailable(f"{self.url} is not open")
        return self._conn

    # -- writes ----------------------------------------------------------------------------

    def write(self, batch: SpanBatch) -> WriteResult:
        if not batch.groups:
            return WriteResult(0, 0)
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    stored = self._write(conn, batch)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"store busy or failing: {exc}") from exc
            except sqlite3.DatabaseError as exc:
                raise StoreUnavailable(f"store failing: {exc}") from exc
        return WriteResult(stored, batch.accepted - stored)

    def _write(self, conn: sqlite3.Connection, batch: SpanBatch) -> int:
        now = time.time()
        conn.executemany(
            "INSERT OR IGNORE INTO resources (resource_id, body) VALUES (?, ?)",
            batch.resources.items(),
        )
        for rollout_id, info in batch.rollouts.items():
            self._ensure_rollout(conn, rollout_id, info, now)
        rows: list[tuple[Any, ...]] = []
        for (rollout_id, wanted_attempt), group in batch.groups.items():
            attempt_id, next_seq = self._ensure_attempt(
                conn, rollout_id, wanted_attempt, group, now
            )
            group.sort(key=_start_time)
            highest = next_seq - 1
            for _, explicit, row in group:
                if explicit is None:
                    seq = next_seq
                    next_seq += 1
                else:
                    seq = explicit
                    if explicit > highest:
                        highest = explicit
                rows.append((rollout_id, attempt_id, seq, *row))
            next_seq = max(next_seq, highest + 1)
            conn.execute(
                "UPDATE attempts SET next_span_seq = ?, last_heartbeat_time = ?,"
                " status = CASE status WHEN 'preparing' THEN 'running' ELSE status END"
                " WHERE rollout_id = ? AND attempt_id = ?",
                (next_seq, now, rollout_id, attempt_id),
            )
        cursor = conn.executemany(_INSERT_SPAN, rows)
        return cursor.rowcount if cursor.rowcount >= 0 else len(rows)

    @staticmethod
    def _ensure_rollout(
        conn: sqlite3.Connection, rollout_id: str, info: RolloutInfo, now: float
    ) -> None:
        start = info.first_start or now
        cursor = conn.execute(
            "INSERT OR IGNORE INTO rollouts (rollout_id, input, start_time, mode, status, config,"
            " metadata, origin) VALUES (?, ?, ?, ?, 'running', ?, ?, ?)",
            (
                rollout_id,
                json.dumps(info.input) if info.has_input else None,
                min(start, now),
                info.mode,
                _DEFAULT_CONFIG_JSON,
                json.dumps(info.metadata) if info.metadata is not None else None,
                info.origin,
            ),
        )
        if cursor.rowcount == 0:
            conn.execute(
                "UPDATE rollouts SET status = 'running'"
                " WHERE rollout_id = ? AND status IN (?, ?, ?)",
                (rollout_id, *_STARTED),
            )
            if info.has_input:
                conn.execute(
                    "UPDATE rollouts SET input = ? WHERE rollout_id = ?",
                    (json.dumps(info.input), rollout_id),
                )
            if info.mode is not None:
                conn.execute(
                    "UPDATE rollouts SET mode = ? WHERE rollout_id = ?", (info.mode, rollout_id)
                )

    @staticmethod
    def _ensure_attempt(
        conn: sqlite3.Connection,
        rollout_id: str,
        attempt_id: str | None,
        group: list[tuple[float, int | None, tuple[Any, ...]]],
        now: float,
    ) -> tuple[str, int]:
        if attempt_id is None:
            found = conn.execute(
                "SELECT attempt_id, next_span_seq FROM attempts WHERE rollout_id = ?"
                " ORDER BY sequence_id DESC LIMIT 1",
                (rollout_id,),
            ).fetchone()
            if found is not None:
                return found[0], found[1]
            attempt_id = attempt_id_for(rollout_id, 1)
        else:
            found = conn.execute(
                "SELECT next_span_seq FROM attempts WHERE rollout_id = ? AND attempt_id = ?",
                (rollout_id, attempt_id),
            ).fetchone()
            if found is not None:
                return attempt_id, found[0]
        starts = [g[0] for g in group if g[0]]
        start = min(min(starts), now) if starts else now
        conn.execute(
            "INSERT INTO attempts (rollout_id, attempt_id, sequence_id, start_time, status,"
            " last_heartbeat_time, next_span_seq) VALUES (?, ?,"
            " (SELECT COALESCE(MAX(sequence_id), 0) + 1 FROM attempts WHERE rollout_id = ?),"
            " ?, 'running', ?, 1)",
            (rollout_id, attempt_id, rollout_id, start, now),
        )
        return attempt_id, 1

    # -- reads -----------------------------------------------------------------------------

    def rollouts(self) -> Iterator[dict[str, Any]]:
        with self._lock:
            conn = self._connection()
            rollouts = conn.execute(
                f"SELECT {ROLLOUT_COLUMNS} FROM rollouts ORDER BY start_time, rowid"
            ).fetchall()
            latest = {
                row[0]: row
                for row in conn.execute(
                    f"SELECT {ATTEMPT_COLUMNS} FROM attempts ORDER BY rollout_id, sequence_id"
                )
            }
        for rollout in rollouts:
            attempt = latest.get(rollout[0])
            if attempt is not None:
                yield attempted_rollout_record(rollout, attempt)

    def spans(
        self, rollout_id: str | None = None, attempt_id: str | None = None
    ) -> Iterator[dict[str, Any]]:
        where, params = [], []
        if rollout_id is not None:
            where.append("s.rollout_id = ?")
            params.append(rollout_id)
        if attempt_id is not None:
            where.append("s.attempt_id = ?")
            params.append(attempt_id)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._lock:
            conn = self._connection()
            rows = conn.execute(
                f"SELECT {', '.join('s.' + c.strip() for c in SPAN_COLUMNS.split(','))}"
                f" FROM spans s LEFT JOIN attempts a"
                f" ON a.rollout_id = s.rollout_id AND a.attempt_id = s.attempt_id"
                f" LEFT JOIN rollouts r ON r.rollout_id = s.rollout_id {clause}"
                f" ORDER BY r.start_time, s.rollout_id, a.sequence_id, s.sequence_id",
                params,
            ).fetchall()
            resources = dict(conn.execute("SELECT resource_id, body FROM resources").fetchall())
        parsed: dict[str, Any] = {}
        for row in rows:
            rid = row[11]
            resource = parsed.get(rid)
            if resource is None:
                resource = parsed[rid] = json.loads(resources[rid])
            yield span_record(row, resource)

    def count_spans(self) -> int:
        with self._lock:
            return int(self._connection().execute("SELECT COUNT(*) FROM spans").fetchone()[0])


def _start_time(item: tuple[float, int | None, tuple[Any, ...]]) -> float:
    return item[0]
