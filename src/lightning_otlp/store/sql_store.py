"""The write path every SQL backend shares: a request's spans into rollouts and attempts, in
the caller's transaction, by one set of rules (routing by trace affinity, per-trace rollouts
that move when their trace is bound, sequence ids, outcomes by ``store.lifecycle``).

A backend (``store.sqlite``, ``store.postgres``) supplies the transaction, where trace affinity
lives (``affinity_for``, ``bind``) and how reads reach the database; the rules are here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Final

from ..batch import Destination, RoutedSpan, SpanBatch
from ..ids import attempt_id_for
from . import placement, views
from .affinity import Changes, TraceAffinity
from .base import Metric, StoreOptions, WriteResult
from .dialect import Conn
from .logs import LogRows, joined_events
from .records import (
    ATTEMPT_COLUMNS,
    ROLLOUT_COLUMNS,
    SPAN_COLUMNS,
    attempted_rollout_record,
    enclosing_spans,
    mark_enclosing,
    resource_bodies,
    span_records,
)
from .sequence import sequence_ids

# One idle step builds at most this many span views (about 15 ms), scanning at most the window.
_VIEW_BATCH: Final = 128
_VIEW_WINDOW: Final = 4096
# While spans are being committed (within ``views.INGEST_SECONDS`` of a commit) the newest are
# prepared as they come, a trainer reading them next; older ones (a backlog left by a burst or
# a restart) take one step this often at most, so preparing them never takes the interpreter
# from the requests: the rest is done when ingest pauses.
BACKLOG_STEP_EVERY: Final = 0.05


class SQLStore:
    """What every SQL store does the same way; subclasses supply the storage primitives.

    Attributes set by a backend: ``url``, ``translate`` (read model-call spans in Agent
    Lightning's shape), ``sequence_ids`` (``defaults.SEQUENCE_IDS``), ``affinity`` (this
    process's trace-affinity state and counters).
    """

    url: str
    create: bool
    salvage: bool
    translate: bool
    prepare_reads: bool
    sequence_ids: str
    affinity: TraceAffinity

    def adopt(self, options: StoreOptions) -> None:
        """Take the options every store has (``StoreOptions``)."""
        self.options = options
        self.affinity = TraceAffinity(options.affinity_window)
        self.create = options.create
        self.salvage = options.salvage
        self.translate = options.translate
        self.prepare_reads = options.prepare_reads
        self.sequence_ids = options.sequence_ids

    # -- storage primitives ----------------------------------------------------------------

    def transaction(self) -> AbstractContextManager[Conn]:
        """A write transaction (``store.api_base.SQLBackend``)."""
        raise NotImplementedError

    def reader(self) -> AbstractContextManager[Conn]:
        """A connection for the read commands, one short statement or transaction at a time."""
        raise NotImplementedError

    def affinity_for(self, conn: Conn, batch: SpanBatch) -> TraceAffinity:
        """The trace affinity a request is routed by: this process's own (one writer), or
        what the database holds of its traces (several)."""
        return self.affinity

    def bind(self, conn: Conn, changes: Changes) -> None:
        """Record the request's new bindings in its transaction, where the database holds them."""

    def read_failed(self, what: str, exc: Exception) -> None:
        """A read command's statement failed: raise, or (salvaging) log and go on."""
        raise exc

    def salvaged_spans(
        self, rollout_ids: set[str] | None, attempt_id: str | None
    ) -> Iterator[dict[str, Any]]:
        """The spans still readable of rollouts a read had to skip (none by default)."""
        return iter(())

    def salvaged_rollouts(self) -> tuple[list[Any], dict[str, Any]]:
        """Rollout rows and latest attempt rows still readable when the tables are not."""
        return [], {}

    read_errors: tuple[type[Exception], ...] = ()
    shared = False
    # Prepared views (``store.views``): how far this process has built them.
    _views_at = 0  # span rowid up to which views were built this run
    _newest_at = 0  # newest spans first: rowid up to which the newest window was looked at
    _newest_from = 0  # where the current run of newest steps began
    _span_top = 0  # the highest span rowid written, as last seen
    _written_at = float("-inf")  # when spans were last committed (time.monotonic)
    _backlog_at = float("-inf")  # when the last backlog step was taken

    # -- writes ----------------------------------------------------------------------------

    def write(self, batch: SpanBatch) -> WriteResult:
        return self.write_many([batch])[0]

    def write_many(self, batches: Sequence[SpanBatch]) -> list[WriteResult]:
        raise NotImplementedError

    def write_in(self, conn: Conn, batch: SpanBatch, changes: Changes) -> int:
        """A request's records, inside the caller's transaction; the number of spans stored."""
        now = time.time()
        groups = batch.groups
        retarget: dict[Destination, Destination] = {}
        affinity = self.affinity_for(conn, batch)
        if batch.bindings or affinity.bindings:
            groups, retarget = placement.follow_bindings(affinity, batch)
        conn.executemany(
            "INSERT INTO resources (resource_id, body) VALUES (?, ?) ON CONFLICT DO NOTHING",
            batch.resources.items(),
        )
        batch.refused = {}
        used = {rollout_id for rollout_id, _ in groups}
        # Rollouts are created first: what is created here is new, and nothing of it is read.
        created: set[str] = set()
        for rollout_id, info in batch.rollouts.items():
            if rollout_id in used and placement.create_rollout(conn, rollout_id, info, now):
                created.add(rollout_id)
                if info.origin == "trace" and info.trace_id is not None:
                    changes.autos.append((info.trace_id, rollout_id, now))
        managed = placement.managed(conn, used - created)
        if managed:
            groups = placement.refuse_unknown_attempts(conn, batch, groups, managed)
            used = {rollout_id for rollout_id, _ in groups}
        for rollout_id, info in batch.rollouts.items():
            if rollout_id not in used or rollout_id in created:
                continue
            if rollout_id in managed:
                # The API's: spans change only what upstream's add_span changes.
                conn.execute(
                    "UPDATE rollouts SET status = 'running'"
                    " WHERE rollout_id = ? AND status = 'preparing'",
                    (rollout_id,),
                )
            else:
                placement.rollout_seen_again(conn, rollout_id, info)
        # Spans of per-trace rollouts that this request's bindings claim, by destination.
        moves = placement.claim_moves(conn, affinity, batch, groups, now, changes)
        resolved: dict[Destination, str] = {}
        rows: list[tuple[Any, ...]] = []
        updates: list[tuple[str, str, int, int]] = []
        for dest, group in groups.items():
            rollout_id = dest[0]
            first = rollout_id in created  # its first attempt: inserted once numbered
            if first:
                created.discard(rollout_id)  # the rollout's other attempts are looked up
                attempt_id, next_seq = dest[1] or attempt_id_for(rollout_id, 1), 1
            else:
                attempt_id, next_seq = placement.ensure_attempt(
                    conn, rollout_id, dest[1], group, now
                )
            resolved[dest] = attempt_id
            # Spans moving here arrived before this request's spans.
            entries: Sequence[RoutedSpan | placement.MovedSpan] = (
                [*moves[dest], *group] if dest in moves else group
            )
            seqs = sequence_ids(self.sequence_ids, conn, rollout_id, attempt_id, entries, next_seq)
            for entry, seq in zip(entries, seqs, strict=True):
                if isinstance(entry, placement.MovedSpan):  # a stored span: it moves here
                    updates.append((rollout_id, attempt_id, seq, entry.rowid))
                else:
                    rows.append((rollout_id, attempt_id, seq, *entry[2]))
            next_seq = max(next_seq, max(seqs) + 1)
            if first:
                placement.first_attempt(conn, rollout_id, attempt_id, group, next_seq, now)
            else:
                conn.execute(
                    "UPDATE attempts SET next_span_seq = ?, last_heartbeat_time = ?,"
                    " status = CASE status WHEN 'preparing' THEN 'running' ELSE status END"
                    " WHERE rollout_id = ? AND attempt_id = ?",
                    (next_seq, now, rollout_id, attempt_id),
                )
        cursor = conn.executemany(conn.dialect.insert_new("spans", SPAN_COLUMNS, 12), rows)
        stored = cursor.rowcount if cursor.rowcount >= 0 else len(rows)
        mark_enclosing(conn, rows, batch.calls)
        if moves:
            placement.finish_moves(conn, updates, changes)
        for trace_id, dest in batch.bindings.items():
            bound_attempt = resolved.get(dest)
            if bound_attempt is not None:
                changes.bound.append((trace_id, (dest[0], bound_attempt)))
        placement.record_outcomes(conn, batch, retarget, resolved, now, changes)
        self.bind(conn, changes)
        views.READ_PACE.ingesting()
        self._written_at = time.monotonic()
        return stored

    def _views_due(self) -> bool:
        """Whether a step of preparing views is worth taking now: the newest spans have none
        yet, or older ones wait and ingest leaves room for them (``BACKLOG_STEP_EVERY``)."""
        top = self._span_top
        if self._newest_at < top:
            return True
        if self._views_at >= top:
            return False
        now = time.monotonic()
        return (
            now - self._written_at >= views.INGEST_SECONDS
            or now - self._backlog_at >= BACKLOG_STEP_EVERY
        )

    def _build_views_step(self, conn: Conn) -> None:
        """Spans stored since the last step first, from the newest window on: a rollout that
        just finished is what a trainer reads next. Older spans (a backlog, or spans the
        newest window slid past) follow in rowid order; views built twice never are, the
        build skips spans that have one."""
        top = self._span_top
        if self._newest_at < top:
            start = max(self._newest_at, self._views_at, top - _VIEW_WINDOW)
            if start != self._newest_at:  # a new run of newest steps: spans were skipped
                self._newest_from = start
            self._newest_at, _ = views.build(conn, start, window=top - start, limit=_VIEW_BATCH)
            if self._newest_from <= self._views_at:  # the run began where the backlog ends
                self._views_at = max(self._views_at, self._newest_at)
            return
        self._backlog_at = time.monotonic()
        self._views_at, _ = views.build(
            conn, self._views_at, window=_VIEW_WINDOW, limit=_VIEW_BATCH
        )

    @staticmethod
    def _top_rowid(conn: Conn) -> int:
        return int(conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM spans").fetchone()[0])

    # -- reads -----------------------------------------------------------------------------

    def rollouts(self) -> Iterator[dict[str, Any]]:
        try:
            with self.reader() as conn:
                rollouts = conn.execute(
                    f"SELECT {ROLLOUT_COLUMNS} FROM rollouts ORDER BY start_time, rowid"
                ).fetchall()
                latest = {
                    row[0]: row
                    for row in conn.execute(
                        f"SELECT {ATTEMPT_COLUMNS} FROM attempts ORDER BY rollout_id, sequence_id"
                    )
                }
        except self.read_errors as exc:
            self.read_failed("the rollouts and attempts tables", exc)
            rollouts, latest = self.salvaged_rollouts()
        for rollout in rollouts:
            attempt = latest.get(rollout[0])
            if attempt is not None:
                yield attempted_rollout_record(rollout, attempt)

    def spans(
        self, rollout_id: str | None = None, attempt_id: str | None = None, *, raw: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Streamed one rollout at a time, each read its own short statement: memory stays at
        one rollout's spans, and the writer is never held up for long while a reader goes
        through millions of spans. Model calls read in Agent Lightning's shape (GenAI log
        records joined onto their span) unless ``raw`` or not translating."""
        translating = self.translate and not raw
        if rollout_id is not None:
            ids: list[str] = [rollout_id]
        else:
            try:
                with self.reader() as conn:
                    ids = [
                        row[0]
                        for row in conn.execute(
                            "SELECT rollout_id FROM rollouts ORDER BY start_time, rollout_id"
                        )
                    ]
            except self.read_errors as exc:
                self.read_failed("the list of rollouts", exc)
                yield from self.salvaged_spans(None, attempt_id)
                return
        where = "s.rollout_id = ?" + (" AND s.attempt_id = ?" if attempt_id is not None else "")
        query = (
            f"SELECT {', '.join('s.' + c.strip() for c in SPAN_COLUMNS.split(','))}, s.record"
            f" FROM spans s LEFT JOIN attempts a"
            f" ON a.rollout_id = s.rollout_id AND a.attempt_id = s.attempt_id"
            f" WHERE {where} ORDER BY a.sequence_id, s.sequence_id"
        )
        resources: dict[str, Any] = {}
        skipped: set[str] = set()
        for rid in ids:
            params = (rid,) if attempt_id is None else (rid, attempt_id)
            try:
                with self.reader() as conn:
                    rows = conn.execute(query, params).fetchall()
                    resources.update(
                        resource_bodies(conn, {row[11] for row in rows} - resources.keys())
                    )
                    traces = {row[3] for row in rows}
                    logs = joined_events(conn, traces) if translating else {}
                    parents = enclosing_spans(conn, traces) if translating else set()
                records = [
                    span_records(row, resources, logs if translating else None, parents)
                    for row in rows
                ]
            except self.read_errors as exc:
                self.read_failed(f"the spans of rollout {rid}", exc)
                skipped.add(rid)
                continue
            yield from records
        if skipped:
            yield from self.salvaged_spans(skipped, attempt_id)

    def summaries(self) -> list[dict[str, Any]]:
        """One line of figures per rollout, for people: status, attempts, spans, time, reward."""
        with self.reader() as conn:
            rows = conn.execute(
                "SELECT r.rollout_id, r.status, r.mode, r.origin, r.start_time, r.end_time,"
                " (SELECT COUNT(*) FROM attempts a WHERE a.rollout_id = r.rollout_id),"
                " (SELECT COUNT(*) FROM spans s WHERE s.rollout_id = r.rollout_id),"
                " (SELECT MAX(end_time) FROM spans s WHERE s.rollout_id = r.rollout_id),"
                " (SELECT reward FROM attempts a WHERE a.rollout_id = r.rollout_id"
                "  ORDER BY sequence_id DESC LIMIT 1)"
                " FROM rollouts r ORDER BY r.start_time, r.rowid"
            ).fetchall()
        out = []
        for rid, status, mode, origin, start, end, attempts, spans, last, reward in rows:
            finish = end if end is not None else last
            out.append(
                {
                    "rollout_id": rid,
                    "status": status,
                    "mode": mode,
                    "origin": origin,
                    "attempts": attempts,
                    "spans": spans,
                    "duration": (finish - start) if finish is not None else None,
                    "reward": reward,
                }
            )
        return out

    def status(self) -> dict[str, Any]:
        with self.reader() as conn:
            rollouts = conn.execute("SELECT COUNT(*) FROM rollouts").fetchone()[0]
            spans = conn.execute("SELECT COUNT(*) FROM spans").fetchone()[0]
        return {"store": self.url, "rollouts": rollouts, "spans": spans}

    def count_spans(self) -> int:
        with self.reader() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM spans").fetchone()[0])

    # -- figures ---------------------------------------------------------------------------

    def metrics(self) -> list[Metric]:
        # Never under the lock: a scrape must not wait behind a commit that waits for the disk.
        preparing = self.prepare_reads and self.translate
        behind = max(0, self._span_top - self._views_at)
        newest = max(0, self._span_top - max(self._views_at, self._newest_at))
        return [
            Metric(
                "lightning_otlp_span_views_behind",
                "Spans stored since the background step that prepares records for fast reads"
                " last caught up (0 when idle long enough).",
                "gauge",
                behind if preparing else 0,
            ),
            Metric(
                "lightning_otlp_span_views_newest_behind",
                "Of the newest spans (prepared first, being what a trainer reads next), how"
                " many still wait for their records: whether preparing keeps up with ingest.",
                "gauge",
                newest if preparing else 0,
            ),
            *self.affinity_metrics(),
        ]

    def affinity_metrics(self) -> list[Metric]:
        moved = self.affinity.counters
        return [
            Metric(
                "lightning_otlp_affinity_moved_spans",
                "Spans moved from a per-trace rollout to the rollout their trace was bound to.",
                "counter",
                moved.moved_spans,
            ),
            Metric(
                "lightning_otlp_affinity_moved_traces",
                "Traces whose per-trace rollout was emptied into a bound rollout.",
                "counter",
                moved.moved_traces,
            ),
            Metric(
                "lightning_otlp_affinity_late_bindings",
                "Bindings that arrived after the affinity window: their trace's earlier spans"
                " stayed where they were.",
                "counter",
                moved.late_bindings,
            ),
            Metric(
                "lightning_otlp_ignored_outcomes",
                "Attempt outcomes spans claimed for attempts or rollouts already finished:"
                " the spans were stored, the claims ignored.",
                "counter",
                moved.ignored_outcomes,
            ),
        ]


def insert_logs(conn: Conn, rows: LogRows) -> int:
    """GenAI log records (``store.logs``) in the caller's transaction; how many are new."""
    cursor = conn.executemany(
        "INSERT INTO span_logs (trace_id, span_id, digest, time, record)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        rows,
    )
    return cursor.rowcount if cursor.rowcount >= 0 else len(rows)
