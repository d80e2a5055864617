"""The outbox: the embedded store's span tables plus the forwarder's own, in one SQLite file.

Its ``spans`` table holds exactly the spans not yet delivered (a delivered span's row is deleted
in the transaction that records the delivery). The forwarder's tables add what forwarding needs
to survive a restart: the local -> server id mapping, what was mirrored, delivery counters and
the last error. ``Outbox`` is the only code that writes SQL for them; it holds an embedded
``SQLiteStore`` (for the span tables, trace affinity and the reads) and shares its connection,
so a request's spans and its outbox mark commit in one transaction.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord as PB2LogRecord

from ..batch import SpanBatch
from ..defaults import DEFAULT_AFFINITY_WINDOW, DEFAULT_LOG_WAIT
from ..errors import StoreUnavailable
from ..store.affinity import Changes
from ..store.base import WriteResult
from ..store.db import transaction
from ..store.logs import LogRows
from ..store.migrations import SQLITE, Migration
from ..store.records import enclosing_rows
from ..store.sqlite import SQLiteStore
from ..translate import answers_call, log_event
from ..translate.otlp import span_awaits_logs, translate_span_bytes

log = logging.getLogger("lightning_otlp.forward")

# How long a sent span that waited is remembered (a log record for it then is late, dropped),
# and how long after they arrived log records whose span never came are pruned.
LOG_MEMORY: Final = 600.0
PRUNE_INTERVAL: Final = 30.0
_CHUNK: Final = 500

# The outbox's tables. IF NOT EXISTS: outboxes written before migrations were recorded by name
# have some of them already.
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
# Applied after every SQLite store's own (``store.migrations.SQLITE``), recorded with them.
OUTBOX: Final[tuple[Migration, ...]] = (Migration("outbox", ";\n".join(SCHEMA)),)

_STATE_COLUMNS: Final = (
    "server, forwarded_spans, forwarded_requests, rollouts_created, rollouts_recreated,"
    " status_updates, last_forward_time, last_error, last_error_time"
)


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
        **_log_status(conn),
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


def _log_status(conn: sqlite3.Connection) -> dict[str, Any]:
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


class Row(NamedTuple):
    """A span pending in the outbox, as the delivery thread sends it."""

    rowid: int
    rollout_id: str
    attempt_id: str
    sequence_id: int
    resource_id: str
    span: bytes  # the OTLP Span message as received


# Where a local attempt goes on the server: (server rollout, server attempt)
Target = tuple[str, str]


@dataclass(frozen=True, slots=True)
class RolloutMapping:
    """A local rollout's server rollout; ``server_rollout_id`` is None while a creation request
    is in doubt (``link``, sent in its metadata at ``requested``, finds it again)."""

    server_rollout_id: str | None
    spare_attempt_id: str | None
    link: str
    requested: float


@dataclass(frozen=True, slots=True)
class AttemptMapping:
    """A local attempt's server attempt; None while a creation request is in doubt, with the
    server's attempt count (``known_attempts``) from before the request."""

    server_attempt_id: str | None
    known_attempts: int | None


@dataclass(frozen=True, slots=True)
class LocalRollout:
    """What a server rollout is created from."""

    input: Any
    mode: str | None
    metadata: Any


class Outbox:
    """The durable queue between the receiver and the server, and the forwarder's memory.

    Args:
        path: the outbox's SQLite file (never ``:memory:``: it is what survives a restart).
        server_url: the server it forwards to, recorded for ``lightning-otlp status``.
        synchronous: SQLite's ``synchronous`` pragma for the file.
        url: the store URL, for messages.
        affinity_window: the embedded store's trace-affinity window, in seconds.
        translate: read and forward model calls in Agent Lightning's shape.
        log_wait: seconds a model call whose messages come as GenAI log records is held for
            them (``translate.awaits_logs``); 0 sends every span at once.
        create, salvage, sequence_ids: as ``SQLiteStore``'s, for the outbox file.
    """

    def __init__(
        self,
        path: str,
        server_url: str,
        *,
        synchronous: str = "FULL",
        url: str | None = None,
        affinity_window: float = DEFAULT_AFFINITY_WINDOW,
        translate: bool = True,
        log_wait: float = DEFAULT_LOG_WAIT,
        create: bool = True,
        salvage: bool = False,
        sequence_ids: str = "start-time",
    ) -> None:
        if log_wait < 0:
            raise ValueError("log_wait must not be negative")
        if path == ":memory:":
            raise ValueError("the outbox must be a file: it is what survives a restart")
        self.store = SQLiteStore(
            path,
            synchronous=synchronous,
            url=url,
            affinity_window=affinity_window,
            translate=translate,
            prepare_reads=False,  # its spans leave for the server: nothing reads them back
            migrations=SQLITE + OUTBOX,
            create=create,
            salvage=salvage,
            sequence_ids=sequence_ids,
        )
        self.server_url = server_url
        # (spans, bytes) pending, kept in memory so the hot path never counts; under the lock.
        self._pending = [0, 0]
        self.log_wait = log_wait
        # Rows of forward_log_waits and of span_logs, so paths with none skip their queries.
        self._waits = 0
        self._logs = 0
        # Bytes of those log records: they count against the outbox's byte limit like spans.
        self._log_bytes = 0
        self._seen = False
        self._gave_up = False
        self.late_logs = 0
        self.pruned_logs = 0
        self._next_prune = 0.0
        # Log records joined onto the spans of the last batch read, and how many each got.
        self._events: dict[tuple[bytes, bytes], list[dict[str, Any]]] = {}
        # Spans of the last batch read that have model-call children (``mark_enclosing``).
        self._enclosing: set[tuple[bytes, bytes]] = set()
        self._joined: dict[int, int] = {}

    @property
    def path(self) -> str:
        return self.store.path

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        if self.store.ready():
            return
        self.store.open()
        try:
            with self.store.locked() as conn:
                conn.execute("UPDATE forward_state SET server = ? WHERE id = 1", (self.server_url,))
                self._load_delivered_bindings(conn)
                self._pending = list(pending(conn))
                # Log records kept before arrivals were (an older outbox) count from now.
                conn.execute(
                    "INSERT OR IGNORE INTO forward_log_arrivals (trace_id, span_id, time)"
                    " SELECT DISTINCT trace_id, span_id, ? FROM span_logs",
                    (time.time(),),
                )
                self._count_logs(conn)
        except sqlite3.Error as exc:
            self.store.close()
            raise StoreUnavailable(f"cannot prepare outbox {self.path}: {exc}") from exc

    def close(self) -> None:
        self.store.close()

    def _load_delivered_bindings(self, conn: sqlite3.Connection) -> None:
        """Trace affinity for traces whose spans already left the outbox (newest kept)."""
        affinity = self.store.affinity
        conn.execute(
            "DELETE FROM forward_traces WHERE time < (SELECT time FROM forward_traces"
            " ORDER BY time DESC LIMIT 1 OFFSET ?)",
            (affinity.max_traces,),
        )
        changes = Changes()
        changes.bound.extend(
            (trace_id, (rollout_id, attempt_id))
            for trace_id, rollout_id, attempt_id in conn.execute(
                "SELECT trace_id, rollout_id, attempt_id FROM forward_traces ORDER BY time"
            )
        )
        # Pending spans were loaded first and are newer: they keep their bindings.
        pending_bound = dict(affinity.bindings)
        affinity.bindings.clear()
        affinity.apply(changes, time.time())
        for trace_id, dest in pending_bound.items():
            affinity.bindings.setdefault(trace_id, dest)

    def _count_logs(self, conn: sqlite3.Connection) -> None:
        self._waits = conn.execute("SELECT COUNT(*) FROM forward_log_waits").fetchone()[0]
        self._logs, self._log_bytes = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(length(record)), 0) FROM span_logs"
        ).fetchone()
        seen, gave_up, self.late_logs, self.pruned_logs = conn.execute(
            "SELECT seen, gave_up, late_logs, pruned_logs FROM forward_log_state WHERE id = 1"
        ).fetchone()
        self._seen, self._gave_up = bool(seen), bool(gave_up)

    # -- the queue -------------------------------------------------------------------------

    def write(self, batch: SpanBatch) -> WriteResult:
        """A request's records and its outbox mark, in one transaction; model calls whose
        messages are still to come as log records are held for them."""
        holding = self.log_wait > 0 and (self._seen or not self._gave_up)
        calls = _awaiting_logs(batch) if holding else []
        try:
            with self.store.write_transaction() as (conn, changes):
                before = conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM spans").fetchone()[0]
                stored = self.store.write_in(conn, batch, changes)
                count, size, top = conn.execute(
                    "SELECT COUNT(*), COALESCE(SUM(length(span)), 0), MAX(rowid) FROM spans"
                    " WHERE rowid > ?",
                    (before,),
                ).fetchone()
                if count:
                    now = time.time()
                    conn.execute(
                        "INSERT OR REPLACE INTO forward_marks (max_rowid, time) VALUES (?, ?)",
                        (top, now),
                    )
                    if calls:
                        self._hold(conn, before, calls, now)
                    self._pending[0] += count
                    self._pending[1] += size
        except StoreUnavailable:
            self.recount()  # the counts above may belong to a transaction rolled back
            raise
        return WriteResult(stored, batch.accepted - stored)

    def _hold(
        self, conn: sqlite3.Connection, before: int, calls: list[tuple[bytes, bytes]], now: float
    ) -> None:
        """Hold this request's new spans among ``calls``; those whose response record is
        already here are released at once (kept as waits, so a record after them is late)."""
        answered = self._answered(conn, calls) if self._logs else set()
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
        self._waits += held

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

    def write_logs(self, rows: LogRows) -> int:
        """GenAI log records, in one transaction: those of a span already sent after waiting
        are dropped and counted (a span on the server never changes), the others kept for
        their span, and a held span whose response record this is released. Returns how many
        records were kept."""
        if not rows:
            return 0
        now = time.time()
        with self.store.locked() as conn:
            try:
                with transaction(conn):
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
                    if self._waits:
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
            self._logs += inserted
            if inserted == len(kept):
                self._log_bytes += sum(len(r.record) for r in kept)
            else:  # some were there already: count again
                self._log_bytes = conn.execute(
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

    def tend(self, now: float | None = None) -> None:
        """Stop holding spans for log records that never come here, and prune what nobody
        will read: memory of sent spans, and log records whose span never came."""
        now = time.time() if now is None else now
        if self._waits and not self._seen and not self._gave_up:
            with self.store.locked() as conn, transaction(conn):
                self._give_up_if_waited(conn, now)
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_INTERVAL
        with self.store.locked() as conn, transaction(conn):
            conn.execute("DELETE FROM forward_sent_waits WHERE time < ?", (now - LOG_MEMORY,))
            if not self._logs:
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
            self._logs -= pruned
            self._log_bytes -= sum(n for (n,) in gone)
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

    def held(self) -> int:
        """Spans held for their log records (or just released); read without the lock."""
        return self._waits

    def pending(self) -> tuple[int, int]:
        """(spans, bytes) pending; read without the lock, so never waits."""
        spans, size = self._pending
        return spans, size

    def log_bytes(self) -> int:
        """Bytes of GenAI log records kept for their spans; read without the lock."""
        return self._log_bytes

    def recount(self) -> None:
        """Count pending spans (and held spans, log records) again, from the tables."""
        try:
            with self.store.locked() as conn:
                self._pending = list(pending(conn))
                self._count_logs(conn)
        except StoreUnavailable:
            pass  # closed: nothing to count

    def pending_batch(
        self, after: int, limit: int, max_bytes: int, busy: Collection[int] = ()
    ) -> tuple[list[Row], int]:
        """Up to ``limit`` pending spans past rowid ``after``, in outbox order, at most
        ``max_bytes`` of span bytes (one span at least), and the new ``after``.

        Held spans are left out until released; released ones join wherever they stand, except
        those in ``busy`` (the batch in flight), and never move ``after``.
        """
        now = time.time()
        affinity = self.store.affinity
        waits = self._waits > 0
        joins, where = "", ""
        params: list[float] = [after]
        if affinity.holding(now):
            # Spans of a trace not yet bound wait out the affinity window here, so the server
            # never receives a span in a rollout it is about to leave.
            joins = " JOIN rollouts r ON r.rollout_id = s.rollout_id"
            where = " AND NOT (r.origin = 'trace' AND r.created_at > ?)"
            params.append(now - affinity.window)
        columns = "s.rowid, s.rollout_id, s.attempt_id, s.sequence_id, s.resource_id, s.span"
        with self.store.locked() as conn:
            released: list[Row] = []
            if waits:
                released = [
                    row
                    for row in map(
                        Row._make,
                        conn.execute(
                            f"SELECT {columns} FROM forward_log_waits w"
                            f" JOIN spans s ON s.rowid = w.span_rowid{joins}"
                            f" WHERE w.until <= ?{where} ORDER BY w.span_rowid LIMIT ?",
                            (now, *params[1:], limit + len(busy)),
                        ),
                    )
                    if row.rowid not in busy
                ][:limit]
                where += (
                    " AND NOT EXISTS (SELECT 1 FROM forward_log_waits w"
                    " WHERE w.span_rowid = s.rowid)"
                )
            rows = list(
                map(
                    Row._make,
                    conn.execute(
                        f"SELECT {columns} FROM spans s{joins} WHERE s.rowid > ?{where}"
                        " ORDER BY s.rowid LIMIT ?",
                        (*params, limit),
                    ),
                )
            )
            if released:
                rows = sorted(rows + released)[:limit]
            size = 0
            for i, row in enumerate(rows):
                size += len(row.span)
                if size > max_bytes and i:
                    rows = rows[:i]
                    break
            if self._logs:
                self._join_logs(conn, rows)
            elif self._events:
                self._events, self._joined = {}, {}
            if self.store.translate:
                self._enclosing = enclosing_rows(conn, [row.rowid for row in rows])
        if released:
            kept = {r.rowid for r in released}
            after = max((r.rowid for r in rows if r.rowid not in kept), default=after)
        elif rows:
            after = rows[-1].rowid
        return rows, after

    def _join_logs(self, conn: sqlite3.Connection, rows: list[Row]) -> None:
        """Read the log records of these spans in one query, for ``translated``."""
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

    def delivered(self, rows: list[Row]) -> None:
        """The server has these spans: count them and take them out, with their log records
        and holds, in one transaction."""
        size = sum(len(r.span) for r in rows)
        now = time.time()
        rowids = json.dumps([r.rowid for r in rows])
        late = waits = logs = log_bytes = 0
        with self.store.locked() as conn:
            with transaction(conn):
                first, last = rows[0].rowid, rows[-1].rowid
                conn.execute(
                    "INSERT OR IGNORE INTO forward_traces (trace_id, rollout_id, attempt_id, time)"
                    " SELECT s.trace_id, s.rollout_id, s.attempt_id, ? FROM spans s"
                    " JOIN rollouts r ON r.rollout_id = s.rollout_id AND r.origin = 'explicit'"
                    " WHERE s.rowid IN (SELECT value FROM json_each(?))",
                    (now, rowids),
                )
                if self._logs:
                    conn.execute(
                        "DELETE FROM forward_log_arrivals WHERE (trace_id, span_id) IN"
                        " (SELECT trace_id, span_id FROM spans"
                        " WHERE rowid IN (SELECT value FROM json_each(?)))",
                        (rowids,),
                    )
                    sent = conn.execute(
                        "DELETE FROM span_logs WHERE rowid IN (SELECT l.rowid FROM spans s"
                        " JOIN span_logs l ON l.trace_id = s.trace_id AND l.span_id = s.span_id"
                        " WHERE s.rowid IN (SELECT value FROM json_each(?)))"
                        " RETURNING length(record)",
                        (rowids,),
                    ).fetchall()
                    logs = len(sent)
                    log_bytes = sum(n for (n,) in sent)
                    # Records that came while their span was on its way: sent without them.
                    late = max(0, logs - sum(self._joined.get(r.rowid, 0) for r in rows))
                    if late:
                        conn.execute(
                            "UPDATE forward_log_state SET late_logs = late_logs + ? WHERE id = 1",
                            (late,),
                        )
                if self._waits:
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
                if last - first + 1 == len(rows):  # the usual case: one contiguous range
                    conn.execute("DELETE FROM spans WHERE rowid BETWEEN ? AND ?", (first, last))
                else:
                    conn.executemany(
                        "DELETE FROM spans WHERE rowid = ?", ((r.rowid,) for r in rows)
                    )
                conn.execute(
                    "DELETE FROM forward_marks WHERE max_rowid <"
                    " COALESCE((SELECT MIN(rowid) FROM spans), 9223372036854775807)"
                )
                conn.execute(
                    "UPDATE forward_state SET forwarded_spans = forwarded_spans + ?,"
                    " forwarded_requests = forwarded_requests + 1, last_forward_time = ?"
                    " WHERE id = 1",
                    (len(rows), now),
                )
            self._pending[0] -= len(rows)
            self._pending[1] -= size
            self._waits -= waits
            self._logs -= logs
            self._log_bytes -= log_bytes
            if self._joined:
                for r in rows:
                    self._joined.pop(r.rowid, None)
            if late:
                self.late_logs += late
                log.warning(
                    "dropped %d GenAI log record(s) that came while their span was being sent",
                    late,
                )

    def reject(self, row: Row, error: str) -> None:
        """The server refused this span for good: keep it aside, out of the queue."""
        with self.store.locked() as conn:
            with transaction(conn):
                conn.execute(
                    "INSERT INTO forward_rejected (rollout_id, attempt_id, sequence_id, trace_id,"
                    " span_id, span, resource_id, error, time) SELECT rollout_id, attempt_id,"
                    " sequence_id, trace_id, span_id, span, resource_id, ?, ? FROM spans"
                    " WHERE rowid = ?",
                    (error[:500], time.time(), row.rowid),
                )
                conn.execute("DELETE FROM spans WHERE rowid = ?", (row.rowid,))
                waits = conn.execute(
                    "DELETE FROM forward_log_waits WHERE span_rowid = ?", (row.rowid,)
                ).rowcount
                conn.execute(
                    "UPDATE forward_state SET last_error = ?, last_error_time = ? WHERE id = 1",
                    (f"refused for good, kept as rejected: {error}"[:500], time.time()),
                )
            self._pending[0] -= 1
            self._pending[1] -= len(row.span)
            self._waits -= waits
            self._joined.pop(row.rowid, None)

    def record_error(self, message: str) -> None:
        """The last delivery error, for ``status``; never raises (it is said while failing)."""
        try:
            self._execute(
                "UPDATE forward_state SET last_error = ?, last_error_time = ? WHERE id = 1",
                (message[:500], time.time()),
            )
        except (StoreUnavailable, sqlite3.Error):
            pass

    def resource(self, resource_id: str) -> dict[str, Any]:
        """A stored resource (``attributes``, ``schema_url``); empty if unknown."""
        found = self._execute("SELECT body FROM resources WHERE resource_id = ?", (resource_id,))
        body: dict[str, Any] = json.loads(found[0][0]) if found else {}
        return body

    def translated(self, span: bytes, resource_id: str) -> bytes:
        """A pending span's bytes as the records show it (``translate.otlp``)."""
        return translate_span_bytes(
            span, self._span_events, lambda: self.resource(resource_id), self._encloses
        )

    def _encloses(self, trace_id: bytes, span_id: bytes) -> bool:
        return (trace_id, span_id) in self._enclosing

    def _span_events(self, trace_id: bytes, span_id: bytes) -> list[dict[str, Any]]:
        """Read with the batch (``pending_batch``): no query per span."""
        return self._events.get((trace_id, span_id), [])

    # -- ids: local -> server --------------------------------------------------------------

    def target(self, rollout_id: str, attempt_id: str) -> Target | None:
        """The server rollout and attempt a local attempt maps to, once both are known."""
        found = self._execute(
            "SELECT r.server_rollout_id, a.server_attempt_id FROM forward_rollouts r"
            " JOIN forward_attempts a ON a.rollout_id = r.rollout_id"
            " WHERE r.rollout_id = ? AND a.attempt_id = ?"
            " AND r.server_rollout_id IS NOT NULL AND a.server_attempt_id IS NOT NULL",
            (rollout_id, attempt_id),
        )
        return (found[0][0], found[0][1]) if found else None

    def rollout_mapping(self, rollout_id: str) -> RolloutMapping | None:
        found = self._execute(
            "SELECT server_rollout_id, spare_attempt_id, link, requested FROM forward_rollouts"
            " WHERE rollout_id = ?",
            (rollout_id,),
        )
        return RolloutMapping(*found[0]) if found else None

    def local_rollout(self, rollout_id: str) -> LocalRollout:
        found = self._execute(
            "SELECT input, mode, metadata FROM rollouts WHERE rollout_id = ?", (rollout_id,)
        )
        input_json, mode, metadata_json = found[0] if found else (None, None, None)
        return LocalRollout(
            json.loads(input_json) if input_json is not None else None,
            mode,
            json.loads(metadata_json) if metadata_json else None,
        )

    def rollout_requested(self, rollout_id: str, link: str) -> None:
        """Committed before a rollout creation request: what finds it again if it is in doubt."""
        self._commit(
            ("DELETE FROM forward_rollouts WHERE rollout_id = ?", (rollout_id,)),
            ("DELETE FROM forward_attempts WHERE rollout_id = ?", (rollout_id,)),
            (
                "INSERT INTO forward_rollouts (rollout_id, link, requested) VALUES (?, ?, ?)",
                (rollout_id, link, time.time()),
            ),
        )

    def rollout_mapped(
        self,
        rollout_id: str,
        server_rollout_id: str,
        *,
        spare_attempt_id: str | None,
        status: str | None,
        created: bool,
    ) -> None:
        """A local rollout goes to ``server_rollout_id`` (which this forwarder ``created``, or
        found); ``spare_attempt_id`` is its first attempt, not yet given to a local one."""
        self._commit(
            ("DELETE FROM forward_attempts WHERE rollout_id = ?", (rollout_id,)),
            (
                "INSERT INTO forward_rollouts (rollout_id, server_rollout_id, spare_attempt_id,"
                " link, requested, mirrored_status) VALUES (?, ?, ?, '', ?, ?)"
                " ON CONFLICT (rollout_id) DO UPDATE SET"
                " server_rollout_id = excluded.server_rollout_id,"
                " spare_attempt_id = excluded.spare_attempt_id,"
                " mirrored_status = excluded.mirrored_status",
                (rollout_id, server_rollout_id, spare_attempt_id, time.time(), status),
            ),
            *(
                [
                    (
                        "UPDATE forward_state SET rollouts_created = rollouts_created + 1"
                        " WHERE id = 1",
                        (),
                    )
                ]
                if created
                else []
            ),
        )

    def attempt_mapping(self, rollout_id: str, attempt_id: str) -> AttemptMapping | None:
        found = self._execute(
            "SELECT server_attempt_id, known_attempts FROM forward_attempts"
            " WHERE rollout_id = ? AND attempt_id = ?",
            (rollout_id, attempt_id),
        )
        return AttemptMapping(*found[0]) if found else None

    def attempt_requested(self, rollout_id: str, attempt_id: str, known_attempts: int) -> None:
        """Committed before an attempt creation request, with the server's attempt count."""
        self._commit(
            (
                "INSERT OR REPLACE INTO forward_attempts (rollout_id, attempt_id,"
                " known_attempts) VALUES (?, ?, ?)",
                (rollout_id, attempt_id, known_attempts),
            )
        )

    def attempt_mapped(
        self,
        rollout_id: str,
        attempt_id: str,
        server_attempt_id: str,
        status: str | None,
        *,
        spare_used: bool = False,
    ) -> None:
        """A local attempt goes to ``server_attempt_id``; ``spare_used`` when it is the server
        rollout's first attempt."""
        statements: list[tuple[str, tuple[Any, ...]]] = [
            (
                "INSERT OR REPLACE INTO forward_attempts (rollout_id, attempt_id,"
                " server_attempt_id, mirrored_status) VALUES (?, ?, ?, ?)",
                (rollout_id, attempt_id, server_attempt_id, status),
            )
        ]
        if spare_used:
            statements.append(
                (
                    "UPDATE forward_rollouts SET spare_attempt_id = NULL WHERE rollout_id = ?",
                    (rollout_id,),
                )
            )
        self._commit(*statements)

    def forget_server_rollouts(self, server_rollout_ids: set[str]) -> int:
        """Drop the mapping of local rollouts that went to these (lost) server rollouts, so they
        are created again; the number of local rollouts forgotten."""
        marks = ",".join("?" * len(server_rollout_ids))
        local = [
            r[0]
            for r in self._execute(
                f"SELECT rollout_id FROM forward_rollouts WHERE server_rollout_id IN ({marks})",
                tuple(server_rollout_ids),
            )
        ]
        statements: list[tuple[str, tuple[Any, ...]]] = []
        for rollout_id in local:
            statements.append(("DELETE FROM forward_rollouts WHERE rollout_id = ?", (rollout_id,)))
            statements.append(("DELETE FROM forward_attempts WHERE rollout_id = ?", (rollout_id,)))
        statements.append(
            (
                "UPDATE forward_state SET rollouts_recreated = rollouts_recreated + ? WHERE id = 1",
                (len(local),),
            )
        )
        self._commit(*statements)
        return len(local)

    # -- statuses: what changed locally since it was last mirrored -------------------------

    # A finished status reaches the server only once no span of its rollout is held: a trainer
    # reads a finished rollout's spans once, and a held model call must be among them.
    def unmirrored_attempts(self) -> list[tuple[str, str, str, str, str]]:
        """(rollout_id, attempt_id, status, server rollout, server attempt) to mirror."""
        return self._execute(
            "SELECT a.rollout_id, a.attempt_id, a.status, r.server_rollout_id, f.server_attempt_id"
            " FROM forward_attempts f"
            " JOIN attempts a ON a.rollout_id = f.rollout_id AND a.attempt_id = f.attempt_id"
            " JOIN forward_rollouts r ON r.rollout_id = f.rollout_id"
            " WHERE f.server_attempt_id IS NOT NULL AND r.server_rollout_id IS NOT NULL"
            " AND a.status IS NOT f.mirrored_status" + (_NOT_HELD % "a" if self._waits else "")
        )

    def unmirrored_rollouts(self) -> list[tuple[str, str, str]]:
        """(rollout_id, status, server rollout) to mirror."""
        return self._execute(
            "SELECT r.rollout_id, r.status, f.server_rollout_id FROM forward_rollouts f"
            " JOIN rollouts r ON r.rollout_id = f.rollout_id"
            " WHERE f.server_rollout_id IS NOT NULL AND r.status IS NOT f.mirrored_status"
            + (_NOT_HELD % "r" if self._waits else "")
        )

    def attempt_mirrored(self, rollout_id: str, attempt_id: str, status: str) -> None:
        self._mirrored(
            "UPDATE forward_attempts SET mirrored_status = ?"
            " WHERE rollout_id = ? AND attempt_id = ?",
            (status, rollout_id, attempt_id),
        )

    def rollout_mirrored(self, rollout_id: str, status: str) -> None:
        self._mirrored(
            "UPDATE forward_rollouts SET mirrored_status = ? WHERE rollout_id = ?",
            (status, rollout_id),
        )

    def _mirrored(self, sql: str, params: tuple[Any, ...]) -> None:
        self._commit(
            (sql, params),
            ("UPDATE forward_state SET status_updates = status_updates + 1 WHERE id = 1", ()),
        )

    def status(self) -> dict[str, Any]:
        """Outbox depth, oldest pending age, forwarded counts and the last error."""
        with self.store.locked() as conn:
            return read_status(conn)

    # -- plumbing --------------------------------------------------------------------------

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """One autocommitted statement on the shared connection."""
        with self.store.locked() as conn:
            return conn.execute(sql, params).fetchall()

    def _commit(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        with self.store.locked() as conn, transaction(conn):
            for sql, params in statements:
                conn.execute(sql, params)


_NOT_HELD: Final = (
    " AND NOT EXISTS (SELECT 1 FROM forward_log_waits w JOIN spans s ON s.rowid = w.span_rowid"
    " WHERE s.rollout_id = %s.rollout_id)"
)


def _record(blob: bytes) -> PB2LogRecord:
    record: PB2LogRecord = PB2LogRecord.FromString(blob)
    return record


def _awaiting_logs(batch: SpanBatch) -> list[tuple[bytes, bytes]]:
    """(trace_id, span_id) of the batch's model calls whose messages come as log records."""
    return [
        (row[0], row[1])
        for group in batch.groups.values()
        for _, _, row in group
        if span_awaits_logs(row[7])
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
