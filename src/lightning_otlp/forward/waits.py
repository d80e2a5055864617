"""GenAI log records in the outbox, and the model calls held for them.

A model call whose messages come as GenAI log records (``translate.awaits_logs``) is held in
the outbox up to ``log_wait`` seconds for them, so the server gets it with its text; the
records wait in the embedded store's ``span_logs`` for their span, joined onto it when it is
sent. A record after its span was sent is late (a span on the server never changes): counted
and dropped. Records whose span never comes are pruned after ``LOG_MEMORY``. If no record ever
reaches this receiver, waiting stops until one does. This module owns the tables for that.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any, Final, NamedTuple

from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord as PB2LogRecord

from ..batch import SpanBatch
from ..errors import StoreUnavailable
from ..store.logs import LogRows
from ..translate import answers_call, log_event
from ..translate.otlp import span_awaits_logs
from .local import LocalFile
from .queue import COLUMNS, SPAN_BYTES, Row

log = logging.getLogger("lightning_otlp.forward")

# How long a sent span that waited is remembered (a log record for it then is late, dropped),
# and how long after they arrived log records whose span never came are pruned.
LOG_MEMORY: Final = 600.0
PRUNE_INTERVAL: Final = 30.0
_CHUNK: Final = 500

SCHEMA: Final[tuple[str, ...]] = (
    # Spans held for their GenAI log records (``translate.awaits_logs``), by outbox rowid:
    # sent from ``until`` on (0 once the call's response record arrived).
    """CREATE TABLE IF NOT EXISTS forward_log_waits (
        span_rowid INTEGER PRIMARY KEY,
        trace_id   BLOB NOT NULL,
        span_id    BLOB NOT NULL,
        until      REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS forward_log_waits_span ON forward_log_waits (trace_id, span_id)",
    # Spans that waited and were sent, for LOG_MEMORY: their log records come too late.
    """CREATE TABLE IF NOT EXISTS forward_sent_waits (
        trace_id BLOB NOT NULL,
        span_id  BLOB NOT NULL,
        time     REAL NOT NULL,
        PRIMARY KEY (trace_id, span_id)
    ) WITHOUT ROWID""",
    # When the first log record of each span still in the outbox arrived, for pruning.
    """CREATE TABLE IF NOT EXISTS forward_log_arrivals (
        trace_id BLOB NOT NULL,
        span_id  BLOB NOT NULL,
        time     REAL NOT NULL,
        PRIMARY KEY (trace_id, span_id)
    ) WITHOUT ROWID""",
    # seen: a GenAI log record has arrived here; gave_up: a span waited its whole time while
    # none ever had (the agents send no log records here), so spans stop waiting until one does.
    """CREATE TABLE IF NOT EXISTS forward_log_state (
        id          INTEGER PRIMARY KEY CHECK (id = 1),
        seen        INTEGER NOT NULL DEFAULT 0,
        gave_up     INTEGER NOT NULL DEFAULT 0,
        late_logs   INTEGER NOT NULL DEFAULT 0,
        pruned_logs INTEGER NOT NULL DEFAULT 0
    )""",
    "INSERT OR IGNORE INTO forward_log_state (id) VALUES (1)",
)

# A rollout (aliased by the ``%s`` given) none of whose spans is held.
NOT_HELD: Final = (
    " AND NOT EXISTS (SELECT 1 FROM forward_log_waits w JOIN spans s ON s.rowid = w.span_rowid"
    " WHERE s.rollout_id = %s.rollout_id)"
)
# A span (``spans s``) not held.
NOT_WAITING: Final = (
    " AND NOT EXISTS (SELECT 1 FROM forward_log_waits w WHERE w.span_rowid = s.rowid)"
)


class Sent(NamedTuple):
    """What delivering a batch took out of the log tables."""

    waits: int
    logs: int
    log_bytes: int
    late: int


def log_status(conn: sqlite3.Connection) -> dict[str, Any]:
    """Spans waiting for log records, and log records dropped (late) or pruned (never met
    their span); zeros for an outbox written before these were kept."""
    try:
        held = conn.execute("SELECT COUNT(*) FROM forward_log_waits").fetchone()[0]
        logs, log_bytes = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(length(record)), 0) FROM span_logs"
        ).fetchone()
        late, pruned = conn.execute(
            "SELECT late_logs, pruned_logs FROM forward_log_state WHERE id = 1"
        ).fetchone()
    except (sqlite3.OperationalError, TypeError):
        held = logs = log_bytes = late = pruned = 0
    return {
        "held_spans": held,
        "pending_logs": logs,
        "pending_log_bytes": log_bytes,
        "late_logs": late,
        "pruned_logs": pruned,
    }


class LogWaits:
    """Held spans and kept log records: their counts in memory, their statements.

    Args:
        local: the outbox file.
        log_wait: seconds a model call is held for its log records; 0 holds none.
        clock: the wall clock (``time.time``).
    """

    def __init__(self, local: LocalFile, log_wait: float, clock: Callable[[], float]) -> None:
        if log_wait < 0:
            raise ValueError("log_wait must not be negative")
        self._local = local
        self.log_wait = log_wait
        self._clock = clock
        # Rows of forward_log_waits and of span_logs, so paths with none skip their queries.
        self.waits = 0
        self.logs = 0
        # Bytes of those log records: they count against the outbox's byte limit like spans.
        self.log_bytes = 0
        self._seen = False
        self._gave_up = False
        self.late_logs = 0
        self.pruned_logs = 0
        self._next_prune = 0.0
        # Log records joined onto the spans of the last batch read, and how many each got.
        self._events: dict[tuple[bytes, bytes], list[dict[str, Any]]] = {}
        self._joined: dict[int, int] = {}

    def load(self, conn: sqlite3.Connection) -> None:
        """On open: log records kept before arrivals were (an older outbox) count from now."""
        conn.execute(
            "INSERT OR IGNORE INTO forward_log_arrivals (trace_id, span_id, time)"
            " SELECT DISTINCT trace_id, span_id, ? FROM span_logs",
            (self._clock(),),
        )
        self.count(conn)

    def count(self, conn: sqlite3.Connection) -> None:
        self.waits = conn.execute("SELECT COUNT(*) FROM forward_log_waits").fetchone()[0]
        self.logs, self.log_bytes = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(length(record)), 0) FROM span_logs"
        ).fetchone()
        seen, gave_up, self.late_logs, self.pruned_logs = conn.execute(
            "SELECT seen, gave_up, late_logs, pruned_logs FROM forward_log_state WHERE id = 1"
        ).fetchone()
        self._seen, self._gave_up = bool(seen), bool(gave_up)

    # -- holding model calls ---------------------------------------------------------------

    def holding(self) -> bool:
        """Whether new model calls are held (waiting is on, and not given up)."""
        return self.log_wait > 0 and (self._seen or not self._gave_up)

    def hold(
        self, conn: sqlite3.Connection, calls: list[tuple[bytes, bytes]], before: int, now: float
    ) -> None:
        """Hold a request's new spans (past rowid ``before``) among ``calls`` (``awaiting``);
        those whose response record is already here are released at once (kept as waits, so a
        record after them is late)."""
        answered = self._answered(conn, calls) if self.logs else set()
        held = conn.execute(
            "INSERT OR IGNORE INTO forward_log_waits (span_rowid, trace_id, span_id, until)"
            " SELECT rowid, trace_id, span_id,"
            " CASE WHEN hex(trace_id) || hex(span_id) IN (SELECT value FROM json_each(?))"
            " THEN 0 ELSE ? END FROM spans WHERE rowid > ?"
            " AND hex(trace_id) || hex(span_id) IN (SELECT value FROM json_each(?))",
            (
                json.dumps([(t + s).hex().upper() for t, s in answered]),
                now + self.log_wait,
                before,
                json.dumps([(t + s).hex().upper() for t, s in calls]),
            ),
        ).rowcount
        self.waits += held

    def _answered(
        self, conn: sqlite3.Connection, calls: list[tuple[bytes, bytes]]
    ) -> set[tuple[bytes, bytes]]:
        """The calls whose response record (``translate.answers_call``) is in the outbox."""
        wanted = set(calls)
        found: set[tuple[bytes, bytes]] = set()
        select = "SELECT trace_id, span_id, record FROM span_logs"
        for trace_id, span_id, blob in _by_trace(conn, select, wanted):
            key = (trace_id, span_id)
            if key in wanted and key not in found and answers_call(_record(blob)):
                found.add(key)
        return found

    def released(
        self,
        conn: sqlite3.Connection,
        joins: str,
        where: str,
        params: tuple[object, ...],
        limit: int,
        busy: Collection[int],
    ) -> list[Row]:
        """Held spans whose wait is over, oldest first, except those in ``busy``; ``joins``
        and ``where`` (on ``spans s``) narrow them as they narrow the queue."""
        return [
            row
            for row in map(
                Row._make,
                conn.execute(
                    f"SELECT {COLUMNS} FROM forward_log_waits w"
                    f" JOIN spans s ON s.rowid = w.span_rowid{joins}"
                    f" WHERE w.until <= ?{where} ORDER BY w.span_rowid LIMIT ?",
                    (self._clock(), *params, limit + len(busy)),
                ),
            )
            if row.rowid not in busy
        ][:limit]

    # -- log records -----------------------------------------------------------------------

    def write_logs(self, rows: LogRows) -> int:
        """GenAI log records, in one transaction: those of a span already sent after waiting
        are dropped and counted (a span on the server never changes), the others kept for
        their span, and a held span whose response record this is released. Returns how many
        records were kept."""
        if not rows:
            return 0
        now = self._clock()
        with self._local.locked() as conn:
            try:
                with self._local.begin(conn):
                    late = _sent_waits(conn, {(r.trace_id, r.span_id) for r in rows})
                    kept = (
                        [r for r in rows if (r.trace_id, r.span_id) not in late] if late else rows
                    )
                    inserted = 0
                    if kept:
                        cursor = conn.executemany(
                            "INSERT OR IGNORE INTO span_logs (trace_id, span_id, digest, time,"
                            " record) VALUES (?, ?, ?, ?, ?)",
                            kept,
                        )
                        inserted = cursor.rowcount if cursor.rowcount >= 0 else len(kept)
                        conn.executemany(
                            "INSERT OR IGNORE INTO forward_log_arrivals (trace_id, span_id, time)"
                            " VALUES (?, ?, ?)",
                            [(t, s, now) for t, s in {(r.trace_id, r.span_id) for r in kept}],
                        )
                    if self.waits:
                        conn.executemany(
                            "UPDATE forward_log_waits SET until = 0"
                            " WHERE trace_id = ? AND span_id = ? AND until > 0",
                            {
                                (r.trace_id, r.span_id)
                                for r in kept
                                if answers_call(_record(r.record))
                            },
                        )
                    if late or not self._seen:
                        conn.execute(
                            "UPDATE forward_log_state SET seen = 1, gave_up = 0,"
                            " late_logs = late_logs + ? WHERE id = 1",
                            (len(rows) - len(kept),),
                        )
            except sqlite3.DatabaseError as exc:
                raise StoreUnavailable(f"store busy or failing: {exc}") from exc
            self.logs += inserted
            if inserted == len(kept):
                self.log_bytes += sum(len(r.record) for r in kept)
            else:  # some were there already: count again
                self.log_bytes = conn.execute(
                    "SELECT COALESCE(SUM(length(record)), 0) FROM span_logs"
                ).fetchone()[0]
            self._seen, self._gave_up = True, False
            if late:
                self.late_logs += len(rows) - len(kept)
                log.warning(
                    "dropped %d GenAI log record(s) that came after their span was forwarded"
                    " (a forwarded span never changes; forward_log_wait is %gs)",
                    len(rows) - len(kept),
                    self.log_wait,
                )
        return inserted

    def join(self, conn: sqlite3.Connection, rows: list[Row]) -> None:
        """Read the log records of a batch's spans in one query, for ``events``."""
        if not self.logs:
            if self._events:
                self._events, self._joined = {}, {}
            return
        events: dict[tuple[bytes, bytes], list[dict[str, Any]]] = {}
        joined = self._joined
        for row in rows:
            joined.pop(row.rowid, None)
        for rowid, trace_id, span_id, blob in conn.execute(
            "SELECT s.rowid, l.trace_id, l.span_id, l.record FROM spans s"
            " JOIN span_logs l ON l.trace_id = s.trace_id AND l.span_id = s.span_id"
            " WHERE s.rowid IN (SELECT value FROM json_each(?)) ORDER BY l.time, l.rowid",
            (json.dumps([r.rowid for r in rows]),),
        ):
            events.setdefault((trace_id, span_id), []).append(log_event(_record(blob)))
            joined[rowid] = joined.get(rowid, 0) + 1
        self._events = events

    def events(self, trace_id: bytes, span_id: bytes) -> list[dict[str, Any]]:
        """A span's log records as span events, read with its batch (``join``)."""
        return self._events.get((trace_id, span_id), [])

    # -- leaving the outbox ----------------------------------------------------------------

    def sent(self, conn: sqlite3.Connection, rows: list[Row], rowids: str, now: float) -> Sent:
        """Delivered spans (``rowids``, a JSON list) take their log records and holds out,
        inside the delivery's transaction, before the spans leave; ``forget`` counts it after."""
        late = waits = logs = log_bytes = 0
        if self.logs:
            conn.execute(
                "DELETE FROM forward_log_arrivals WHERE (trace_id, span_id) IN"
                " (SELECT trace_id, span_id FROM spans"
                " WHERE rowid IN (SELECT value FROM json_each(?)))",
                (rowids,),
            )
            gone = conn.execute(
                "DELETE FROM span_logs WHERE rowid IN (SELECT l.rowid FROM spans s"
                " JOIN span_logs l ON l.trace_id = s.trace_id AND l.span_id = s.span_id"
                " WHERE s.rowid IN (SELECT value FROM json_each(?)))"
                " RETURNING length(record)",
                (rowids,),
            ).fetchall()
            logs = len(gone)
            log_bytes = sum(n for (n,) in gone)
            # Records that came while their span was on its way: sent without them.
            late = max(0, logs - sum(self._joined.get(r.rowid, 0) for r in rows))
            if late:
                conn.execute(
                    "UPDATE forward_log_state SET late_logs = late_logs + ? WHERE id = 1", (late,)
                )
        if self.waits:
            if not self._seen and not self._gave_up:
                self._give_up_if_waited(conn, now)
            conn.execute(
                "INSERT OR REPLACE INTO forward_sent_waits (trace_id, span_id, time)"
                " SELECT trace_id, span_id, ? FROM forward_log_waits"
                " WHERE span_rowid IN (SELECT value FROM json_each(?))",
                (now, rowids),
            )
            waits = conn.execute(
                "DELETE FROM forward_log_waits"
                " WHERE span_rowid IN (SELECT value FROM json_each(?))",
                (rowids,),
            ).rowcount
        return Sent(waits, logs, log_bytes, late)

    def set_aside(self, conn: sqlite3.Connection, rowid: int) -> int:
        """A span refused for good stops being held; the holds removed."""
        count: int = conn.execute(
            "DELETE FROM forward_log_waits WHERE span_rowid = ?", (rowid,)
        ).rowcount
        return count

    def forget(self, rows: Iterable[Row], sent: Sent) -> None:
        """Uncount what left with these spans, once their transaction committed."""
        self.waits -= sent.waits
        self.logs -= sent.logs
        self.log_bytes -= sent.log_bytes
        if self._joined:
            for r in rows:
                self._joined.pop(r.rowid, None)
        if sent.late:
            self.late_logs += sent.late
            log.warning(
                "dropped %d GenAI log record(s) that came while their span was being sent",
                sent.late,
            )

    # -- upkeep ----------------------------------------------------------------------------

    def tend(self, now: float | None = None) -> None:
        """Stop holding spans for log records that never come here, and prune what nobody
        will read: memory of sent spans, and log records whose span never came."""
        now = self._clock() if now is None else now
        if self.waits and not self._seen and not self._gave_up:
            with self._local.transaction() as conn:
                self._give_up_if_waited(conn, now)
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_INTERVAL
        with self._local.transaction() as conn:
            conn.execute("DELETE FROM forward_sent_waits WHERE time < ?", (now - LOG_MEMORY,))
            if not self.logs:
                return
            # Records of a held span stay while it waits, however long the server is away.
            stale = (
                "SELECT a.trace_id, a.span_id FROM forward_log_arrivals a WHERE a.time < ?"
                " AND NOT EXISTS (SELECT 1 FROM forward_log_waits w"
                " WHERE w.trace_id = a.trace_id AND w.span_id = a.span_id)"
            )
            gone = conn.execute(
                f"DELETE FROM span_logs WHERE (trace_id, span_id) IN ({stale})"
                " RETURNING length(record)",
                (now - LOG_MEMORY,),
            ).fetchall()
            pruned = len(gone)
            conn.execute(
                f"DELETE FROM forward_log_arrivals WHERE (trace_id, span_id) IN ({stale})",
                (now - LOG_MEMORY,),
            )
            if pruned:
                conn.execute(
                    "UPDATE forward_log_state SET pruned_logs = pruned_logs + ? WHERE id = 1",
                    (pruned,),
                )
        if pruned:
            self.logs -= pruned
            self.log_bytes -= sum(n for (n,) in gone)
            self.pruned_logs += pruned
            log.info("pruned %d GenAI log record(s) whose span never came", pruned)

    def _give_up_if_waited(self, conn: sqlite3.Connection, now: float) -> None:
        """No log record has ever arrived, and a span waited its whole time: the agents send
        them elsewhere, or not at all, so waiting would only delay spans. The first log record
        to arrive resumes it."""
        if conn.execute(
            "SELECT 1 FROM forward_log_waits WHERE until > 0 AND until <= ? LIMIT 1", (now,)
        ).fetchone():
            conn.execute("UPDATE forward_log_state SET gave_up = 1 WHERE id = 1")
            conn.execute("UPDATE forward_log_waits SET until = 0")
            self._gave_up = True
            log.info(
                "no GenAI log records have reached this receiver: model calls are forwarded"
                " without waiting for them until one does"
            )


def _record(blob: bytes) -> PB2LogRecord:
    record: PB2LogRecord = PB2LogRecord.FromString(blob)
    return record


def awaiting(batch: SpanBatch) -> list[tuple[bytes, bytes]]:
    """(trace_id, span_id) of the batch's model calls whose messages come as log records."""
    return [
        (row[0], row[1])
        for group in batch.groups.values()
        for _, _, row in group
        if span_awaits_logs(row[SPAN_BYTES])
    ]


def _sent_waits(
    conn: sqlite3.Connection, keys: Iterable[tuple[bytes, bytes]]
) -> set[tuple[bytes, bytes]]:
    """Those of ``keys`` that name a span sent after waiting for its log records."""
    wanted = set(keys)
    select = "SELECT trace_id, span_id FROM forward_sent_waits"
    return {key for key in _by_trace(conn, select, wanted) if key in wanted}


def _by_trace(
    conn: sqlite3.Connection, select: str, keys: Iterable[tuple[bytes, bytes]]
) -> Iterator[Any]:
    """The rows of ``select`` for the traces of these (trace_id, span_id) keys, asked in
    chunks (SQLite bounds the parameters of one statement)."""
    traces = sorted({trace_id for trace_id, _ in keys})
    for start in range(0, len(traces), _CHUNK):
        chunk = traces[start : start + _CHUNK]
        yield from conn.execute(
            f"{select} WHERE trace_id IN ({', '.join('?' * len(chunk))})", chunk
        )
