"""The pending queue: which spans wait in the outbox, since when, and what leaves it.

The embedded store's ``spans`` table is the queue itself: it holds exactly the spans not yet
delivered (a delivered span's row is deleted in the transaction that records the delivery).
This module owns the tables that bookkeeping needs: ``forward_marks`` (when each request's
spans arrived), ``forward_traces`` (where delivered traces went, for trace affinity after a
restart) and ``forward_rejected`` (spans the server refused for good). The span and byte counts
are kept in memory so the hot path never counts.
"""

from __future__ import annotations

import sqlite3
from typing import Final, NamedTuple

from ..batch import Destination, SpanBatch

SCHEMA: Final[tuple[str, ...]] = (
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
)

# Where a batch's span row (``batch.SpanRow``) holds the OTLP span's bytes.
SPAN_BYTES: Final = 7

# A pending span's columns, aliased ``s``, in ``Row``'s order.
COLUMNS: Final = "s.rowid, s.rollout_id, s.attempt_id, s.sequence_id, s.resource_id, s.span"


class Row(NamedTuple):
    """A span pending in the outbox, as the delivery thread sends it."""

    rowid: int
    rollout_id: str
    attempt_id: str
    sequence_id: int
    resource_id: str
    span: bytes  # the OTLP Span message as received


class Added(NamedTuple):
    """What one request added to the queue."""

    spans: int
    bytes: int


def span_bytes(batch: SpanBatch) -> int:
    """The bytes of every span a request carries: at most what it adds to the queue."""
    return sum(len(row[SPAN_BYTES]) for group in batch.groups.values() for _, _, row in group)


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


def rejected(conn: sqlite3.Connection) -> int:
    """Spans set aside as refused for good."""
    count: int = conn.execute("SELECT COUNT(*) FROM forward_rejected").fetchone()[0]
    return count


def delivered_bindings(conn: sqlite3.Connection, keep: int) -> list[tuple[bytes, Destination]]:
    """Where delivered traces went, oldest first; only the newest ``keep`` are kept."""
    conn.execute(
        "DELETE FROM forward_traces WHERE time < (SELECT time FROM forward_traces"
        " ORDER BY time DESC LIMIT 1 OFFSET ?)",
        (keep,),
    )
    return [
        (trace_id, (rollout_id, attempt_id))
        for trace_id, rollout_id, attempt_id in conn.execute(
            "SELECT trace_id, rollout_id, attempt_id FROM forward_traces ORDER BY time"
        )
    ]


class Queue:
    """The pending spans' counts in memory, and the queue's statements."""

    def __init__(self) -> None:
        # (spans, bytes) pending; changed under the store's lock, read without it.
        self._spans = 0
        self._bytes = 0

    def counts(self) -> tuple[int, int]:
        """(spans, bytes) pending; read without the lock, so never waits."""
        return self._spans, self._bytes

    def recount(self, conn: sqlite3.Connection) -> None:
        self._spans, self._bytes = pending(conn)

    def add(self, added: Added) -> None:
        """Count a committed request's spans."""
        self._spans += added.spans
        self._bytes += added.bytes

    def mark(self, conn: sqlite3.Connection, before: int, now: float) -> Added:
        """Mark the spans a request just wrote past rowid ``before`` with their arrival time;
        what they add, counted by ``add`` once the transaction commits."""
        count, size, top = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(length(span)), 0), MAX(rowid) FROM spans"
            " WHERE rowid > ?",
            (before,),
        ).fetchone()
        if count:
            conn.execute(
                "INSERT OR REPLACE INTO forward_marks (max_rowid, time) VALUES (?, ?)", (top, now)
            )
        return Added(int(count), int(size))

    @staticmethod
    def select(
        conn: sqlite3.Connection, joins: str, where: str, params: tuple[object, ...], limit: int
    ) -> list[Row]:
        """Pending spans past rowid ``params[0]`` in outbox order, ``joins`` and ``where``
        (on ``spans s``) narrowing them."""
        return list(
            map(
                Row._make,
                conn.execute(
                    f"SELECT {COLUMNS} FROM spans s{joins} WHERE s.rowid > ?{where}"
                    " ORDER BY s.rowid LIMIT ?",
                    (*params, limit),
                ),
            )
        )

    @staticmethod
    def remember_traces(conn: sqlite3.Connection, rowids: str, now: float) -> None:
        """Before these spans (a JSON list of rowids) leave: where their traces went."""
        conn.execute(
            "INSERT OR IGNORE INTO forward_traces (trace_id, rollout_id, attempt_id, time)"
            " SELECT s.trace_id, s.rollout_id, s.attempt_id, ? FROM spans s"
            " JOIN rollouts r ON r.rollout_id = s.rollout_id AND r.origin = 'explicit'"
            " WHERE s.rowid IN (SELECT value FROM json_each(?))",
            (now, rowids),
        )

    def take(self, conn: sqlite3.Connection, rows: list[Row]) -> Added:
        """Take delivered spans out, with the marks no pending span needs any more; what they
        took, for ``remove`` once the transaction commits."""
        first, last = rows[0].rowid, rows[-1].rowid
        if last - first + 1 == len(rows):  # the usual case: one contiguous range
            conn.execute("DELETE FROM spans WHERE rowid BETWEEN ? AND ?", (first, last))
        else:
            conn.executemany("DELETE FROM spans WHERE rowid = ?", ((r.rowid,) for r in rows))
        conn.execute(
            "DELETE FROM forward_marks WHERE max_rowid <"
            " COALESCE((SELECT MIN(rowid) FROM spans), 9223372036854775807)"
        )
        return Added(len(rows), sum(len(r.span) for r in rows))

    @staticmethod
    def set_aside(conn: sqlite3.Connection, row: Row, error: str, now: float) -> Added:
        """A span refused for good: kept in ``forward_rejected``, out of the queue."""
        conn.execute(
            "INSERT INTO forward_rejected (rollout_id, attempt_id, sequence_id, trace_id,"
            " span_id, span, resource_id, error, time) SELECT rollout_id, attempt_id,"
            " sequence_id, trace_id, span_id, span, resource_id, ?, ? FROM spans"
            " WHERE rowid = ?",
            (error[:500], now, row.rowid),
        )
        conn.execute("DELETE FROM spans WHERE rowid = ?", (row.rowid,))
        return Added(1, len(row.span))

    def remove(self, taken: Added) -> None:
        """Uncount spans that left, once their transaction committed."""
        self._spans -= taken.spans
        self._bytes -= taken.bytes
