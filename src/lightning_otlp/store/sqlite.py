"""The embedded store: one SQLite file in WAL mode, one transaction per request or group of
requests committed together."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, cast

from google.protobuf.message import DecodeError

from ..batch import MAX_SEQUENCE_ID, Destination, RolloutInfo, SpanBatch
from ..defaults import DEFAULT_AFFINITY_WINDOW, SEQUENCE_IDS, SYNCHRONOUS
from ..errors import StoreDamaged, StoreUnavailable
from ..ids import attempt_id_for, rollout_id_for_trace
from . import views
from .affinity import Changes, TraceAffinity
from .base import Metric, WriteResult
from .db import transaction
from .logs import LogRows, joined_events
from .migrations import SQLITE, Migration, migrate
from .records import (
    ATTEMPT_COLUMNS,
    DEFAULT_ROLLOUT_CONFIG,
    ROLLOUT_COLUMNS,
    SPAN_COLUMNS,
    attempted_rollout_record,
    enclosing_spans,
    mark_enclosing,
    resource_bodies,
    span_records,
)

if TYPE_CHECKING:
    pass

log = logging.getLogger("lightning_otlp.store")

# (conn, rollout_id, attempt_id, status, end_time, now)
OutcomeHook = Callable[[sqlite3.Connection, str, str, str, float, float], None]

_INSERT_SPAN: Final = f"INSERT OR IGNORE INTO spans ({SPAN_COLUMNS}) VALUES ({', '.join('?' * 12)})"
_DEFAULT_CONFIG_JSON: Final = json.dumps(DEFAULT_ROLLOUT_CONFIG)
_STARTED: Final = ("queuing", "preparing", "requeuing")
# Salvage reads by rowid this many rows at a time; without a highest rowid, it stops after
# this many rowids in a row that hold nothing.
_SALVAGE_STEP: Final = 256
_SALVAGE_GAP: Final = 65_536
_FINISHED_ATTEMPT: Final = ("succeeded", "failed", "timeout")
_FINISHED_ROLLOUT: Final = ("succeeded", "failed", "cancelled")
NO_SUCH_ATTEMPT: Final = (
    "not stored: they name an attempt that does not exist on a rollout the LightningStore API"
    " manages (its attempts start through the API: dequeue or start_attempt)"
)
# An attempt's span counter above this was left by an unbounded explicit sequence id (before
# they were bounded): it is rebuilt from the attempt's spans, so it can never overflow SQLite.
_COUNTER_CEILING: Final = 2**62
_WAL_SIZE_LIMIT: Final = 64 * 1024 * 1024
_CACHE_KIB: Final = 64 * 1024
# One idle step builds at most this many span views (about 15 ms), scanning at most the window.
_VIEW_BATCH: Final = 128
_VIEW_WINDOW: Final = 4096


class SQLiteStore:
    """SQLite-backed store; ``path`` may be ``:memory:`` for tests.

    Args:
        path: database file, created with its schema on first open.
        synchronous: SQLite's ``synchronous`` pragma; ``FULL`` survives power loss,
            ``NORMAL`` survives a crash of this process only.
        busy_timeout: seconds to wait for a lock before answering "unavailable".
        affinity_window: seconds during which spans that went to a per-trace rollout move to
            the rollout their trace is later bound to.
        create: create the file when it does not exist (off for read-only tools).
        salvage: reads skip a rollout a damaged file cannot give back, logging it, instead
            of failing.
        translate: read model-call spans of the GenAI conventions in Agent Lightning's shape
            (``lightning_otlp.translate``); False reads every span exactly as received.
        prepare_reads: build each span's record in the background (``idle_work``), so reading a
            rollout's spans back through the API is fast; costs about the spans' size on disk.
        sequence_ids: ``start-time`` or ``counter`` (``batch.SEQUENCE_IDS``): how spans
            without an explicit sequence id get one.
        migrations: the schema's recorded list (``store.migrations``); an outbox adds its own.
    """

    def __init__(
        self,
        path: str,
        *,
        synchronous: str = "FULL",
        busy_timeout: float = 2.0,
        url: str | None = None,
        affinity_window: float = DEFAULT_AFFINITY_WINDOW,
        create: bool = True,
        salvage: bool = False,
        translate: bool = True,
        prepare_reads: bool = True,
        sequence_ids: str = "start-time",
        migrations: Sequence[Migration] = SQLITE,
    ) -> None:
        if sequence_ids not in SEQUENCE_IDS:
            raise ValueError(f"sequence_ids must be one of {SEQUENCE_IDS}, not {sequence_ids!r}")
        if synchronous.upper() not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
        self.path = path
        self.url = url or f"sqlite:///{path}"
        self._synchronous = synchronous.upper()
        self._busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self.affinity = TraceAffinity(affinity_window)
        self.create = create
        self.salvage = salvage
        self.translate = translate
        self.prepare_reads = prepare_reads
        self.sequence_ids = sequence_ids
        self.migrations = migrations
        # Set by the LightningStore API over this store: an attempt's outcome carried by OTLP
        # spans then goes through the API's lifecycle (retries, workers) in the same transaction.
        self.on_outcome: OutcomeHook | None = None
        self._views_at = 0  # span rowid up to which views were built this run
        # Newest spans first: rowid up to which the newest window was looked at.
        self._newest_at = 0
        self._newest_from = 0  # where the current run of newest steps began
        self._span_top = 0  # the highest span rowid written, as last seen

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        if self._conn is not None:
            return
        if self.path != ":memory:":
            if not self.create and not os.path.isfile(self.path):
                raise FileNotFoundError(
                    f"no store at {os.path.abspath(self.path)}: nothing was ever stored there"
                    " (check --store)"
                )
            self._empty_file()
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
            # After a checkpoint the WAL file is cut back to this size, so one long read (or a
            # burst of writes) does not leave it at its largest for good.
            conn.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT}")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            # Span ids are random, so each request's index inserts land on pages all over a
            # rollout's part of the index: SQLite's default 2 MiB cache misses on most of them.
            conn.execute(f"PRAGMA cache_size={-_CACHE_KIB}")
            conn.execute("PRAGMA foreign_keys=OFF")
            migrate(conn, self.migrations)
            if self.create:  # a read-only tool routes nothing: it needs no trace affinity
                _can_write(conn, self.url)
                self._load_affinity(conn)
            self._span_top = self._top_rowid(conn)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open {self.url}: {exc}") from exc
        self._conn = conn

    def _empty_file(self) -> None:
        """Name a zero-length file where a store was expected: a read tool refuses it (reading
        would create tables in it), ``serve`` starts a new store in it and says so."""
        if not os.path.isfile(self.path) or os.path.getsize(self.path) != 0:
            return
        wal = self.path + "-wal"
        if os.path.isfile(wal) and os.path.getsize(wal) > 0:
            return  # everything is still in the WAL: a store all the same
        what = f"{os.path.abspath(self.path)} is an empty file (0 bytes), not a store"
        if not self.create:
            raise StoreDamaged(f"{what}: nothing was ever stored in it, or it was truncated")
        log.warning(
            "%s: starting a new store in it (if one was expected there, it was truncated:"
            " stop and restore it)",
            what,
        )

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def ready(self) -> bool:
        return self._conn is not None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailable(f"{self.url} is not open")
        return self._conn

    # -- writes ----------------------------------------------------------------------------

    def write(self, batch: SpanBatch) -> WriteResult:
        if not batch.groups:
            return WriteResult(0, 0)
        with self.write_transaction() as (conn, changes):
            stored = self.write_in(conn, batch, changes)
        return WriteResult(stored, batch.accepted - stored)

    def write_many(self, batches: Sequence[SpanBatch]) -> list[WriteResult]:
        """One transaction for several requests (the pipeline's group commit): one sync to disk
        instead of one each. Each batch sees the trace affinity the ones before it made, as it
        would have after their commits; if the transaction fails, affinity is rebuilt from what
        is on disk, since those changes were never committed."""
        if len(batches) == 1:
            return [self.write(batches[0])]
        stored: list[int] = []
        with self.locked() as conn:
            try:
                with transaction(conn):
                    for batch in batches:
                        changes = Changes()
                        stored.append(self.write_in(conn, batch, changes) if batch.groups else 0)
                        self.affinity.apply(changes, time.time())
            except BaseException as exc:
                if stored:  # what the first batches changed in memory was never committed
                    counters = self.affinity.counters
                    self.affinity = TraceAffinity(self.affinity.window, self.affinity.max_traces)
                    self.affinity.counters = counters
                    self._load_affinity(conn)
                if isinstance(exc, sqlite3.DatabaseError):
                    raise StoreUnavailable(f"store busy or failing: {exc}") from exc
                raise
        return [
            WriteResult(n, batch.accepted - n) for n, batch in zip(stored, batches, strict=True)
        ]

    @contextmanager
    def locked(self) -> Iterator[sqlite3.Connection]:
        """The store's connection under its lock, for a table owner sharing the file (the
        forwarder's outbox keeps its own tables beside these)."""
        with self._lock:
            yield self._connection()

    @contextmanager
    def write_transaction(self) -> Iterator[tuple[sqlite3.Connection, Changes]]:
        """One write transaction under the lock; trace-affinity changes made in it apply once it
        commits, and a failing database becomes ``StoreUnavailable`` (retryable)."""
        changes = Changes()
        with self.locked() as conn:
            try:
                with transaction(conn):
                    yield conn, changes
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"store busy or failing: {exc}") from exc
            except sqlite3.DatabaseError as exc:
                raise StoreUnavailable(f"store failing: {exc}") from exc
            self.affinity.apply(changes, time.time())

    def write_in(self, conn: sqlite3.Connection, batch: SpanBatch, changes: Changes) -> int:
        """A request's records, inside the caller's transaction; the number of spans stored."""
        now = time.time()
        groups = batch.groups
        retarget: dict[Destination, Destination] = {}
        if batch.bindings or self.affinity.bindings:
            groups, retarget = self._follow_bindings(batch)
        conn.executemany(
            "INSERT OR IGNORE INTO resources (resource_id, body) VALUES (?, ?)",
            batch.resources.items(),
        )
        batch.refused = {}
        used = {rollout_id for rollout_id, _ in groups}
        managed = _managed(conn, used)
        if managed:
            groups = _refuse_unknown_attempts(conn, batch, groups, managed)
            used = {rollout_id for rollout_id, _ in groups}
        for rollout_id, info in batch.rollouts.items():
            if rollout_id not in used:
                continue
            if rollout_id in managed:
                # The API's: spans change only what upstream's add_span changes.
                conn.execute(
                    "UPDATE rollouts SET status = 'running'"
                    " WHERE rollout_id = ? AND status = 'preparing'",
                    (rollout_id,),
                )
            elif self._ensure_rollout(conn, rollout_id, info, now):
                if info.origin == "trace" and info.trace_id is not None:
                    changes.autos.append((info.trace_id, rollout_id, now))
        # Spans of per-trace rollouts that this request's bindings claim, by destination.
        moves = self._claim_moves(conn, batch, groups, now, changes)
        resolved: dict[Destination, str] = {}
        rows: list[tuple[Any, ...]] = []
        updates: list[tuple[Any, ...]] = []
        for dest, group in groups.items():
            rollout_id = dest[0]
            attempt_id, next_seq = self._ensure_attempt(conn, rollout_id, dest[1], group, now)
            resolved[dest] = attempt_id
            # Spans moving here arrived before this request's spans.
            entries: list[Any] = [*moves[dest], *group] if dest in moves else group
            seqs = self._sequence_ids(conn, rollout_id, attempt_id, entries, next_seq)
            for (_, _, row), seq in zip(entries, seqs, strict=True):
                if isinstance(row, int):  # a stored span's rowid: it moves here
                    updates.append((rollout_id, attempt_id, seq, row))
                else:
                    rows.append((rollout_id, attempt_id, seq, *row))
            next_seq = max(next_seq, max(seqs) + 1)
            conn.execute(
                "UPDATE attempts SET next_span_seq = ?, last_heartbeat_time = ?,"
                " status = CASE status WHEN 'preparing' THEN 'running' ELSE status END"
                " WHERE rollout_id = ? AND attempt_id = ?",
                (next_seq, now, rollout_id, attempt_id),
            )
        cursor = conn.executemany(_INSERT_SPAN, rows)
        stored = cursor.rowcount if cursor.rowcount >= 0 else len(rows)
        mark_enclosing(conn, rows)
        self._span_top = self._top_rowid(conn)
        if moves:
            self._finish_moves(conn, updates, changes)
        for trace_id, dest in batch.bindings.items():
            bound_attempt = resolved.get(dest)
            if bound_attempt is not None:
                changes.bound.append((trace_id, (dest[0], bound_attempt)))
        self._record_outcomes(conn, batch, retarget, resolved, now, changes)
        return stored

    def _sequence_ids(
        self,
        conn: sqlite3.Connection,
        rollout_id: str,
        attempt_id: str,
        entries: list[tuple[float, int | None, Any]],
        next_seq: int,
    ) -> list[int]:
        """Each entry's sequence id: an explicit one as given; otherwise the attempt's counter
        in arrival order, or (``start-time``) the span's start in microseconds, so a span that
        arrives late (an exporter's batch delay) still sorts where it started, stepped past
        every id already taken in the attempt so none repeats."""
        out: list[int | None] = [explicit for _, explicit, _ in entries]
        if self.sequence_ids == "counter":
            for i, seq in enumerate(out):
                if seq is None:
                    out[i] = next_seq
                    next_seq += 1
            return cast(list[int], out)
        # Timed spans in start order, then any without a start time after them.
        order = sorted(
            (i for i, seq in enumerate(out) if seq is None),
            key=lambda i: (entries[i][0] <= 0, entries[i][0]),
        )
        wanted = []
        previous = 0
        for i in order:
            start = entries[i][0]
            value = max(round(start * 1_000_000) if start > 0 else next_seq, previous)
            wanted.append(value)
            previous = value
        explicit = {seq for seq in out if seq is not None}
        issued = free_sequence_ids(conn, rollout_id, attempt_id, wanted, explicit)
        for i, seq in zip(order, issued, strict=True):
            out[i] = seq
        return cast(list[int], out)

    def _follow_bindings(
        self, batch: SpanBatch
    ) -> tuple[dict[Destination, list[Any]], dict[Destination, Destination]]:
        """Send spans without explicit ids to the rollout their trace is bound to."""
        known = self.affinity.bindings
        fresh = batch.bindings
        rollouts = batch.rollouts
        groups: dict[Destination, list[Any]] = {}
        retarget: dict[Destination, Destination] = {}
        for dest, group in batch.groups.items():
            info = rollouts.get(dest[0])
            if info is None or info.origin == "explicit":
                groups.setdefault(dest, []).extend(group)
                continue
            stay = []
            for item in group:
                trace_id = item[2][0]
                target = known.get(trace_id) or fresh.get(trace_id)
                if target is None:
                    stay.append(item)
                else:
                    groups.setdefault(target, []).append(item)
                    retarget[dest] = target
            if stay:
                groups.setdefault(dest, []).extend(stay)
        return groups, retarget

    def _claim_moves(
        self,
        conn: sqlite3.Connection,
        batch: SpanBatch,
        groups: dict[Destination, list[Any]],
        now: float,
        changes: Changes,
    ) -> dict[Destination, list[tuple[float, None, int]]]:
        moves: dict[Destination, list[tuple[float, None, int]]] = {}
        affinity = self.affinity
        if not affinity.autos:
            return moves
        for trace_id, dest in batch.bindings.items():
            if trace_id in affinity.bindings or dest not in groups:
                # bound before: its per-trace rollout, if any, was dealt with then; or its
                # destination refused these spans: the trace's spans stay where they are
                continue
            auto = affinity.movable(trace_id, now, changes)
            if auto is None or auto == dest[0]:
                continue
            stored = conn.execute(
                "SELECT start_time, rowid FROM spans WHERE rollout_id = ?", (auto,)
            ).fetchall()
            moves.setdefault(dest, []).extend(
                (start or 0.0, None, rowid) for start, rowid in stored
            )
            changes.moved.append(trace_id)
            changes.moved_spans += len(stored)
        return moves

    @staticmethod
    def _finish_moves(
        conn: sqlite3.Connection, updates: list[tuple[Any, ...]], changes: Changes
    ) -> None:
        conn.executemany(
            "UPDATE OR IGNORE spans SET rollout_id = ?, attempt_id = ?, sequence_id = ?"
            " WHERE rowid = ?",
            updates,
        )
        emptied = [(rollout_id_for_trace(t.hex()),) for t in changes.moved]
        # Whatever could not move was already in the target (a duplicate): drop it with its
        # emptied per-trace rollout.
        conn.executemany(
            "DELETE FROM span_views"
            " WHERE span_rowid IN (SELECT rowid FROM spans WHERE rollout_id = ?)",
            emptied,
        )
        conn.executemany("DELETE FROM spans WHERE rollout_id = ?", emptied)
        conn.executemany("DELETE FROM attempts WHERE rollout_id = ?", emptied)
        conn.executemany("DELETE FROM rollouts WHERE rollout_id = ?", emptied)

    def _record_outcomes(
        self,
        conn: sqlite3.Connection,
        batch: SpanBatch,
        retarget: dict[Destination, Destination],
        resolved: dict[Destination, str],
        now: float,
        changes: Changes,
    ) -> None:
        for dest, value in batch.rewards.items():
            target = retarget.get(dest, dest)
            attempt_id = resolved.get(target)
            if attempt_id is not None:
                conn.execute(
                    "UPDATE attempts SET reward = ? WHERE rollout_id = ? AND attempt_id = ?",
                    (value, target[0], attempt_id),
                )
        outcomes = dict(batch.outcomes)
        for dest, outcome in batch.root_outcomes.items():
            if dest not in retarget:
                outcomes.setdefault(dest, outcome)
        for dest, (status, end) in outcomes.items():
            target = retarget.get(dest, dest)
            attempt_id = resolved.get(target)
            if attempt_id is None:
                continue
            rollout_id = target[0]
            if _finished(conn, rollout_id, attempt_id):
                # Finished stays finished: a late span is stored, its claim ignored (counted).
                changes.ignored_outcomes += 1
                continue
            end_time = end if end is not None else now
            if self.on_outcome is not None:
                self.on_outcome(conn, rollout_id, attempt_id, status, end_time, now)
                continue
            conn.execute(
                "UPDATE attempts SET status = ?, end_time = ?"
                " WHERE rollout_id = ? AND attempt_id = ?",
                (status, end_time, rollout_id, attempt_id),
            )
            # A rollout follows its latest attempt.
            conn.execute(
                "UPDATE rollouts SET status = ?, end_time = ? WHERE rollout_id = ? AND ? = ("
                " SELECT attempt_id FROM attempts WHERE rollout_id = ?"
                " ORDER BY sequence_id DESC LIMIT 1)",
                (status, end_time, rollout_id, attempt_id, rollout_id),
            )

    def _load_affinity(self, conn: sqlite3.Connection) -> None:
        """Rebuild trace affinity from the newest spans and per-trace rollouts on disk."""
        affinity = self.affinity
        limit = affinity.max_traces
        rows = conn.execute(
            "SELECT s.trace_id, s.rollout_id, s.attempt_id FROM spans s"
            " JOIN rollouts r ON r.rollout_id = s.rollout_id AND r.origin = 'explicit'"
            " WHERE s.rowid > (SELECT COALESCE(MAX(rowid), 0) FROM spans) - ?"
            " ORDER BY s.rowid",
            (limit,),
        )
        changes = Changes()
        changes.bound.extend((t, (r, a)) for t, r, a in rows)
        now = time.time()
        for rollout_id, start, metadata in conn.execute(
            "SELECT rollout_id, created_at, metadata FROM rollouts WHERE origin = 'trace'"
            " AND rowid > (SELECT COALESCE(MAX(rowid), 0) FROM rollouts) - ? AND created_at > ?"
            " ORDER BY rowid",
            (limit, now - affinity.window - max(affinity.window, 60.0)),
        ):
            trace_hex = (json.loads(metadata or "{}").get("lightning_otlp") or {}).get("trace_id")
            if trace_hex:
                changes.autos.append((bytes.fromhex(trace_hex), rollout_id, start))
        affinity.apply(changes, now)

    @staticmethod
    def _ensure_rollout(
        conn: sqlite3.Connection, rollout_id: str, info: RolloutInfo, now: float
    ) -> bool:
        """Create the rollout unless it exists; True when it was created."""
        start = info.first_start or now
        cursor = conn.execute(
            "INSERT OR IGNORE INTO rollouts (rollout_id, input, start_time, mode, status, config,"
            " metadata, origin, created_at) VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?)",
            (
                rollout_id,
                json.dumps(info.input) if info.has_input else None,
                min(start, now),
                info.mode,
                _DEFAULT_CONFIG_JSON,
                json.dumps(info.metadata) if info.metadata is not None else None,
                info.origin,
                now,
            ),
        )
        if cursor.rowcount == 1:
            return True
        conn.execute(
            "UPDATE rollouts SET status = 'running' WHERE rollout_id = ? AND status IN (?, ?, ?)",
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
        return False

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
                return found[0], _counter(conn, rollout_id, found[0], found[1])
            attempt_id = attempt_id_for(rollout_id, 1)
        else:
            found = conn.execute(
                "SELECT next_span_seq FROM attempts WHERE rollout_id = ? AND attempt_id = ?",
                (rollout_id, attempt_id),
            ).fetchone()
            if found is not None:
                return attempt_id, _counter(conn, rollout_id, attempt_id, found[0])
        starts = [g[0] for g in group if g[0]]
        start = min(min(starts), now) if starts else now
        conn.execute(
            "INSERT INTO attempts (rollout_id, attempt_id, sequence_id, start_time, status,"
            " last_heartbeat_time, next_span_seq) VALUES (?, ?,"
            " (SELECT COALESCE(MAX(sequence_id), 0) + 1 FROM attempts WHERE rollout_id = ?),"
            " ?, 'running', ?, 1)",
            (rollout_id, attempt_id, rollout_id, start, now),
        )
        # The rollout follows its newest attempt: running again, whatever the last one ended as.
        conn.execute(
            "UPDATE rollouts SET status = 'running', end_time = NULL WHERE rollout_id = ?",
            (rollout_id,),
        )
        return attempt_id, 1

    # -- reads -----------------------------------------------------------------------------

    def rollouts(self) -> Iterator[dict[str, Any]]:
        try:
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
        except sqlite3.DatabaseError as exc:
            self._damaged("the rollouts and attempts tables", exc)
            rollouts = sorted(
                self._salvage_rows("rollouts", ROLLOUT_COLUMNS), key=lambda r: r[2] or 0.0
            )
            latest = {}
            for row in sorted(self._salvage_rows("attempts", ATTEMPT_COLUMNS), key=_by_sequence):
                latest[row[0]] = row
        for rollout in rollouts:
            attempt = latest.get(rollout[0])
            if attempt is not None:
                yield attempted_rollout_record(rollout, attempt)

    def spans(
        self, rollout_id: str | None = None, attempt_id: str | None = None, *, raw: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Streamed one rollout at a time, each read its own short statement: memory stays at
        one rollout's spans, and a checkpoint can reset the WAL between rollouts while a
        reader goes through millions of spans. Model calls read in Agent Lightning's shape
        (GenAI log records joined onto their span) unless ``raw`` or not translating."""
        translating = self.translate and not raw
        if rollout_id is not None:
            ids: list[str] = [rollout_id]
        else:
            try:
                with self._lock:
                    ids = [
                        row[0]
                        for row in self._connection().execute(
                            "SELECT rollout_id FROM rollouts ORDER BY start_time, rollout_id"
                        )
                    ]
            except sqlite3.DatabaseError as exc:
                self._damaged("the list of rollouts", exc)
                yield from self._salvage_spans(None, attempt_id)
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
                with self._lock:
                    conn = self._connection()
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
            except (sqlite3.DatabaseError, ValueError, KeyError, DecodeError) as exc:
                self._damaged(f"the spans of rollout {rid}", exc)
                skipped.add(rid)
                continue
            yield from records
        if skipped:
            yield from self._salvage_spans(skipped, attempt_id)

    def _salvage_spans(
        self, rollout_ids: set[str] | None, attempt_id: str | None
    ) -> Iterator[dict[str, Any]]:
        """The spans still readable row by row, of these rollouts (all when None), in the order
        they were stored, as received (a damaged file's joins cannot be trusted)."""
        resources: dict[str, Any] = {}
        for row in self._salvage_rows("spans", f"{SPAN_COLUMNS}, record"):
            if rollout_ids is not None and row[0] not in rollout_ids:
                continue
            if attempt_id is not None and row[1] != attempt_id:
                continue
            try:
                if row[11] not in resources:
                    with self._lock:
                        resources.update(resource_bodies(self._connection(), [row[11]]))
                record = span_records(row, resources, None)
            except (sqlite3.DatabaseError, ValueError, KeyError, DecodeError) as exc:
                log.warning("skipped span %s of rollout %s: %s", row[4], row[0], exc)
                continue
            yield record

    def _salvage_rows(self, table: str, columns: str) -> Iterator[tuple[Any, ...]]:
        """Rows of ``table`` read by rowid, a range at a time and one row at a time in a range
        that fails: every row whose own page is readable, whatever else is damaged."""
        top = None
        with self._lock:
            try:
                top = self._connection().execute(f"SELECT MAX(rowid) FROM {table}").fetchone()[0]
            except sqlite3.DatabaseError:
                pass
        lost = 0
        start, empty = 1, 0
        # Without the highest rowid, go on until _SALVAGE_GAP rowids in a row hold nothing.
        while (start <= top) if top is not None else (empty < _SALVAGE_GAP):
            end = start + _SALVAGE_STEP - 1
            rows: list[tuple[Any, ...]] = []
            with self._lock:
                conn = self._connection()
                select = f"SELECT {columns} FROM {table} WHERE rowid"
                try:
                    rows = conn.execute(f"{select} BETWEEN ? AND ?", (start, end)).fetchall()
                except sqlite3.DatabaseError:
                    for rowid in range(start, end + 1):
                        try:
                            rows.extend(conn.execute(f"{select} = ?", (rowid,)).fetchall())
                        except sqlite3.DatabaseError:
                            lost += 1
            empty = 0 if rows else empty + _SALVAGE_STEP
            yield from rows
            start = end + 1
        if lost:
            log.warning("skipped %d unreadable row(s) of %s", lost, table)

    def write_logs(self, rows: LogRows) -> int:
        """Commit GenAI log records (``store.logs``) in one transaction; return how many are new."""
        if not rows:
            return 0
        with self.locked() as conn:
            try:
                with transaction(conn):
                    cursor = conn.executemany(
                        "INSERT OR IGNORE INTO span_logs (trace_id, span_id, digest, time, record)"
                        " VALUES (?, ?, ?, ?, ?)",
                        rows,
                    )
            except sqlite3.DatabaseError as exc:
                raise StoreUnavailable(f"store busy or failing: {exc}") from exc
        return cursor.rowcount if cursor.rowcount >= 0 else len(rows)

    def idle_work(self) -> bool:
        """One short step of background work, run while no batch waits for the store thread:
        build the next span views (``store.views``). True while there is more to do."""
        if not (self.prepare_reads and self.translate):
            return False
        try:
            with self.locked() as conn:
                self._span_top = self._top_rowid(conn)
                if self._span_top <= self._views_at:
                    return False  # caught up: a read, no write lock taken
                # Never wait for a lock another process holds: requests would wait behind it.
                conn.execute("PRAGMA busy_timeout = 0")
                try:
                    with transaction(conn):
                        self._build_views_step(conn)
                finally:
                    conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
                return bool(self._views_at < self._top_rowid(conn))
        except sqlite3.OperationalError:
            return False  # the file is busy (another writer): try again when next idle
        except sqlite3.DatabaseError as exc:
            log.warning("stopped preparing span records for reads: %s", exc)
            self.prepare_reads = False
            return False

    def _build_views_step(self, conn: sqlite3.Connection) -> None:
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
        self._views_at, _ = views.build(
            conn, self._views_at, window=_VIEW_WINDOW, limit=_VIEW_BATCH
        )

    @staticmethod
    def _top_rowid(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM spans").fetchone()[0])

    def _damaged(self, what: str, exc: Exception) -> None:
        """Skip ``what`` when salvaging; otherwise fail with what to do about it."""
        if not self.salvage:
            raise StoreDamaged(
                f"{self.url} is damaged ({exc}) reading {what}: run `lightning-otlp check-store`;"
                " `--salvage` reads whatever is still readable"
            ) from exc
        log.warning("skipped %s: %s", what, exc)

    def check(self, full: bool = False) -> list[str]:
        """SQLite's own check of every page: ``quick_check``, or ``integrity_check`` (slower,
        also compares each index with its table) with ``full``."""
        pragma = "integrity_check" if full else "quick_check"
        with self._lock:
            try:
                rows = self._connection().execute(f"PRAGMA {pragma}").fetchall()
            except sqlite3.DatabaseError as exc:
                return [str(exc)]
        problems = [str(row[0]) for row in rows]
        return [] if problems == ["ok"] else problems

    def summaries(self) -> list[dict[str, Any]]:
        """One line of figures per rollout, for people: status, attempts, spans, time, reward."""
        with self._lock:
            rows = (
                self._connection()
                .execute(
                    "SELECT r.rollout_id, r.status, r.mode, r.origin, r.start_time, r.end_time,"
                    " (SELECT COUNT(*) FROM attempts a WHERE a.rollout_id = r.rollout_id),"
                    " (SELECT COUNT(*) FROM spans s WHERE s.rollout_id = r.rollout_id),"
                    " (SELECT MAX(end_time) FROM spans s WHERE s.rollout_id = r.rollout_id),"
                    " (SELECT reward FROM attempts a WHERE a.rollout_id = r.rollout_id"
                    "  ORDER BY sequence_id DESC LIMIT 1)"
                    " FROM rollouts r ORDER BY r.start_time, r.rowid"
                )
                .fetchall()
            )
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

    def metrics(self) -> list[Metric]:
        moved = self.affinity.counters
        # Never under the lock: a scrape must not wait behind a commit that waits for the disk.
        behind = max(0, self._span_top - self._views_at)
        return [
            Metric(
                "lightning_otlp_span_views_behind",
                "Spans stored since the background step that prepares records for fast reads"
                " last caught up (0 when idle long enough).",
                "gauge",
                behind if self.prepare_reads and self.translate else 0,
            ),
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

    def status(self) -> dict[str, Any]:
        with self._lock:
            conn = self._connection()
            rollouts = conn.execute("SELECT COUNT(*) FROM rollouts").fetchone()[0]
            spans = conn.execute("SELECT COUNT(*) FROM spans").fetchone()[0]
        return {"store": self.url, "rollouts": rollouts, "spans": spans}

    def count_spans(self) -> int:
        with self._lock:
            return int(self._connection().execute("SELECT COUNT(*) FROM spans").fetchone()[0])


def _counter(conn: sqlite3.Connection, rollout_id: str, attempt_id: str, stored: int) -> int:
    """An attempt's next sequence id; a counter out of bounds is rebuilt from its spans."""
    if 1 <= stored <= _COUNTER_CEILING:
        return stored
    row = conn.execute(
        "SELECT COALESCE(MAX(sequence_id), 0) + 1 FROM spans"
        " WHERE rollout_id = ? AND attempt_id = ? AND sequence_id BETWEEN 0 AND ?",
        (rollout_id, attempt_id, MAX_SEQUENCE_ID),
    ).fetchone()
    return int(row[0])


def _managed(conn: sqlite3.Connection, rollout_ids: set[str]) -> set[str]:
    """Which of these rollouts the LightningStore API created (or queued)."""
    found: set[str] = set()
    ids = list(rollout_ids)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        found.update(
            row[0]
            for row in conn.execute(
                "SELECT rollout_id FROM rollouts WHERE (managed = 1 OR status IN"
                f" ('queuing', 'requeuing')) AND rollout_id IN ({', '.join('?' * len(chunk))})",
                chunk,
            )
        )
    return found


def _refuse_unknown_attempts(
    conn: sqlite3.Connection,
    batch: SpanBatch,
    groups: dict[Destination, list[Any]],
    managed: set[str],
) -> dict[Destination, list[Any]]:
    """The groups whose attempt exists; spans for an API-managed rollout's missing attempt are
    refused (upstream refuses a span for an unknown attempt too): an OTLP span must not start
    an attempt, which would take a queued rollout off the queue or reopen a finished one."""
    kept: dict[Destination, list[Any]] = {}
    for dest, group in groups.items():
        rollout_id, attempt_id = dest
        if rollout_id in managed:
            if attempt_id is None:
                found = conn.execute(
                    "SELECT 1 FROM attempts WHERE rollout_id = ? LIMIT 1", (rollout_id,)
                ).fetchone()
            else:
                found = conn.execute(
                    "SELECT 1 FROM attempts WHERE rollout_id = ? AND attempt_id = ?",
                    (rollout_id, attempt_id),
                ).fetchone()
            if found is None:
                batch.refused[NO_SUCH_ATTEMPT] = batch.refused.get(NO_SUCH_ATTEMPT, 0) + len(group)
                continue
        kept[dest] = group
    return kept


def _finished(conn: sqlite3.Connection, rollout_id: str, attempt_id: str) -> bool:
    row = conn.execute(
        "SELECT a.status, r.status FROM attempts a JOIN rollouts r ON r.rollout_id = a.rollout_id"
        " WHERE a.rollout_id = ? AND a.attempt_id = ?",
        (rollout_id, attempt_id),
    ).fetchone()
    return row is not None and (row[0] in _FINISHED_ATTEMPT or row[1] in _FINISHED_ROLLOUT)


def _by_sequence(row: tuple[Any, ...]) -> int:
    return int(row[2] or 0)


def _can_write(conn: sqlite3.Connection, url: str) -> None:
    """Refuse at start a store that cannot be written (a read-only file, directory or file
    system): serving it would answer every export with a retryable 503 for ever."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("UPDATE schema_migrations SET name = name")
        finally:
            conn.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        if "readonly" not in str(exc) and "read-only" not in str(exc):
            raise
        raise StoreUnavailable(
            f"cannot write {url}: {exc}; serve needs a writable store (the spans, rollouts and"
            " check-store commands read a read-only one)"
        ) from None


def free_sequence_ids(
    conn: sqlite3.Connection,
    rollout_id: str,
    attempt_id: str,
    wanted: list[int],
    taken: set[int] | None = None,
) -> list[int]:
    """For ``wanted`` (in order, not decreasing), the least ids at or above each, rising, that
    no stored span of the attempt has and ``spans/next`` has not issued (nor ``taken``)."""
    if not wanted:
        return []
    taken = set(taken or ())
    low = wanted[0]
    high = low - 1

    def fetch(upper: int) -> None:
        nonlocal high
        taken.update(
            row[0]
            for row in conn.execute(
                "SELECT sequence_id FROM spans WHERE rollout_id = ? AND attempt_id = ?"
                " AND sequence_id BETWEEN ? AND ? UNION ALL"
                " SELECT sequence_id FROM span_issued WHERE rollout_id = ? AND attempt_id = ?"
                " AND sequence_id BETWEEN ? AND ?",
                (rollout_id, attempt_id, high + 1, upper) * 2,
            )
        )
        high = upper

    fetch(wanted[-1] + len(wanted))
    out = []
    previous = low - 1
    for value in wanted:
        seq = max(value, previous + 1)
        while True:
            if seq > high:
                fetch(seq + len(wanted))
            if seq not in taken:
                break
            seq += 1
        out.append(seq)
        previous = seq
    return out
