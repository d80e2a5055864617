"""The outbox: the embedded store's span tables plus the forwarder's own, in one SQLite file.

Its parts, one concern and one set of tables each: ``queue`` (pending spans, delivered and
rejected ones), ``mapping`` (local ids to the server's), ``waits`` (model calls held for their
GenAI log records), ``mirror`` (statuses the server has not been told) and ``counters``
(``figures`` reads them all for ``status``). ``Outbox`` puts them together where one
transaction spans several: a request's spans with their marks and holds, a delivery with
everything that leaves with it. The file's connection is reached only through ``local``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, Final

from ..batch import SpanBatch
from ..defaults import DEFAULT_LOG_WAIT
from ..errors import StoreUnavailable
from ..store.base import DEFAULT_OPTIONS, StoreOptions, WriteResult
from ..store.logs import LogRows
from ..store.migrations import SQLITE, Migration
from ..store.records import enclosing_rows
from ..translate.otlp import translate_span_bytes
from . import counters, mapping, queue, waits
from .figures import read_status
from .local import LocalFile
from .mapping import IdMap
from .mirror import Mirror
from .queue import Queue, Row
from .waits import LogWaits

log = logging.getLogger("lightning_otlp.forward")

# Applied after every SQLite store's own (``store.migrations.SQLITE``), recorded with them;
# each part's tables, IF NOT EXISTS: outboxes written before migrations were recorded by name
# have some of them already.
OUTBOX: Final[tuple[Migration, ...]] = (
    Migration("outbox", ";\n".join(mapping.SCHEMA + queue.SCHEMA + waits.SCHEMA + counters.SCHEMA)),
)


class Outbox:
    """The durable queue between the receiver and the server, and the forwarder's memory.

    Args:
        path: the outbox's SQLite file (never ``:memory:``: it is what survives a restart).
        server_url: the server it forwards to, recorded for ``lightning-otlp status``.
        synchronous: SQLite's ``synchronous`` pragma for the file.
        url: the store URL, for messages.
        options: the outbox file's ``StoreOptions`` (``translate``: read and forward model
            calls in Agent Lightning's shape).
        log_wait: seconds a model call whose messages come as GenAI log records is held for
            them (``translate.awaits_logs``); 0 sends every span at once.
        clock: the wall clock the outbox's own times come from (tests move it by hand).
    """

    def __init__(
        self,
        path: str,
        server_url: str,
        *,
        synchronous: str = "FULL",
        url: str | None = None,
        options: StoreOptions = DEFAULT_OPTIONS,
        log_wait: float = DEFAULT_LOG_WAIT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if log_wait < 0:
            raise ValueError("log_wait must not be negative")
        if path == ":memory:":
            raise ValueError("the outbox must be a file: it is what survives a restart")
        self.local = LocalFile(
            path,
            migrations=SQLITE + OUTBOX,
            delivered=queue.delivered_bindings,
            synchronous=synchronous,
            url=url,
            options=options,
        )
        self.store = self.local.store  # for reads of what is pending
        self.server_url = server_url
        self._clock = clock
        self.queue = Queue()
        self.waits = LogWaits(self.local, log_wait, clock)
        self.ids = IdMap(self.local, clock)
        self.statuses = Mirror(self.local, self.waits)
        # Spans of the last batch read that have model-call children (``mark_enclosing``).
        self._enclosing: set[tuple[bytes, bytes]] = set()

    @property
    def path(self) -> str:
        return self.local.path

    @property
    def log_wait(self) -> float:
        return self.waits.log_wait

    @property
    def late_logs(self) -> int:
        return self.waits.late_logs

    @property
    def pruned_logs(self) -> int:
        return self.waits.pruned_logs

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        if self.local.ready():
            return
        self.local.open()
        try:
            with self.local.locked() as conn:
                conn.execute(*counters.server(self.server_url))
                self.local.bind_delivered(conn)
                self.queue.recount(conn)
                self.waits.load(conn)
        except sqlite3.Error as exc:
            self.local.close()
            raise StoreUnavailable(f"cannot prepare outbox {self.path}: {exc}") from exc

    def close(self) -> None:
        self.local.close()

    # -- the queue -------------------------------------------------------------------------

    def write(self, batch: SpanBatch) -> WriteResult:
        """A request's records and its outbox mark, in one transaction; model calls whose
        messages are still to come as log records are held for them."""
        return self.write_many([batch])[0]

    def write_many(self, batches: Sequence[SpanBatch]) -> list[WriteResult]:
        """Several requests' records and marks in one transaction, all or none, as if
        written one after the other (one sync to disk instead of one each)."""
        holding = self.waits.holding()
        calls = [waits.awaiting(batch) if holding else [] for batch in batches]
        now = self._clock()

        def after(conn: sqlite3.Connection, i: int, before: int) -> None:
            held = calls[i]
            added = self.queue.mark(conn, before, now)
            if added.spans:
                if held:
                    self.waits.hold(conn, held, before, now)
                self.queue.add(added)

        try:
            stored = self.local.write_group(batches, after)
        except StoreUnavailable:
            self.recount()  # the counts above may belong to a transaction rolled back
            raise
        return [WriteResult(n, b.accepted - n) for n, b in zip(stored, batches, strict=True)]

    def write_logs(self, rows: LogRows) -> int:
        """GenAI log records, kept for their spans (``waits.LogWaits.write_logs``)."""
        return self.waits.write_logs(rows)

    def tend(self, now: float | None = None) -> None:
        """Stop holding spans for log records that never come, and prune (``waits``)."""
        self.waits.tend(now)

    def held(self) -> int:
        """Spans held for their log records (or just released); read without the lock."""
        return self.waits.waits

    def pending(self) -> tuple[int, int]:
        """(spans, bytes) pending; read without the lock, so never waits."""
        return self.queue.counts()

    def log_bytes(self) -> int:
        """Bytes of GenAI log records kept for their spans; read without the lock."""
        return self.waits.log_bytes

    def recount(self) -> None:
        """Count pending spans (and held spans, log records) again, from the tables."""
        try:
            with self.local.locked() as conn:
                self.queue.recount(conn)
                self.waits.count(conn)
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
        now = self._clock()
        affinity = self.local.affinity
        joins, where = "", ""
        params: tuple[object, ...] = ()
        if affinity.holding(now):
            # Spans of a trace not yet bound wait out the affinity window here, so the server
            # never receives a span in a rollout it is about to leave.
            joins = " JOIN rollouts r ON r.rollout_id = s.rollout_id"
            where = " AND NOT (r.origin = 'trace' AND r.created_at > ?)"
            params = (now - affinity.window,)
        with self.local.locked() as conn:
            released: list[Row] = []
            if self.waits.waits:
                released = self.waits.released(conn, joins, where, params, limit, busy)
                where += waits.NOT_WAITING
            rows = self.queue.select(conn, joins, where, (after, *params), limit)
            if released:
                rows = sorted(rows + released)[:limit]
            size = 0
            for i, row in enumerate(rows):
                size += len(row.span)
                if size > max_bytes and i:
                    rows = rows[:i]
                    break
            self.waits.join(conn, rows)
            if self.local.store.translate:
                self._enclosing = enclosing_rows(conn, [row.rowid for row in rows])
        if released:
            kept = {r.rowid for r in released}
            after = max((r.rowid for r in rows if r.rowid not in kept), default=after)
        elif rows:
            after = rows[-1].rowid
        return rows, after

    def delivered(self, rows: list[Row]) -> None:
        """The server has these spans: count them and take them out, with their log records
        and holds, in one transaction."""
        now = self._clock()
        rowids = json.dumps([r.rowid for r in rows])
        with self.local.locked() as conn:
            with self.local.begin(conn):
                self.queue.remember_traces(conn, rowids, now)
                sent = self.waits.sent(conn, rows, rowids, now)
                taken = self.queue.take(conn, rows)
                conn.execute(*counters.forwarded(len(rows), now))
            self.queue.remove(taken)
            self.waits.forget(rows, sent)

    def reject(self, row: Row, error: str) -> None:
        """The server refused this span for good: keep it aside, out of the queue."""
        now = self._clock()
        with self.local.locked() as conn:
            with self.local.begin(conn):
                taken = self.queue.set_aside(conn, row, error, now)
                held = self.waits.set_aside(conn, row.rowid)
                conn.execute(*counters.error(f"refused for good, kept as rejected: {error}", now))
            self.queue.remove(taken)
            self.waits.forget([row], waits.Sent(held, 0, 0, 0))

    def record_error(self, message: str) -> None:
        """The last delivery error, for ``status``; never raises (it is said while failing)."""
        try:
            self.local.execute(*counters.error(message, self._clock()))
        except (StoreUnavailable, sqlite3.Error):
            pass

    def resource(self, resource_id: str) -> dict[str, Any]:
        """A stored resource (``attributes``, ``schema_url``); empty if unknown."""
        found = self.local.execute(
            "SELECT body FROM resources WHERE resource_id = ?", (resource_id,)
        )
        body: dict[str, Any] = json.loads(found[0][0]) if found else {}
        return body

    def translated(self, span: bytes, resource_id: str) -> bytes:
        """A pending span's bytes as the records show it (``translate.otlp``)."""
        return translate_span_bytes(
            span, self.waits.events, lambda: self.resource(resource_id), self._encloses
        )

    def _encloses(self, trace_id: bytes, span_id: bytes) -> bool:
        return (trace_id, span_id) in self._enclosing

    def status(self) -> dict[str, Any]:
        """Outbox depth, oldest pending age, forwarded counts and the last error."""
        with self.local.locked() as conn:
            return read_status(conn, self._clock())
