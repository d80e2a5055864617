"""The LightningStore API over the embedded SQLite store, with upstream's rollout lifecycle.

Mirrors agentlightning 0.3.0 ``store/collection_based.py``: queuing -> preparing -> running ->
succeeded / failed / cancelled, requeuing by ``RolloutConfig``, the debounced watchdog that
times out and marks unresponsive attempts, and workers' status. Every call is one SQLite
transaction on the receiver's store thread, so API and OTLP writes never interleave.

The queue is a column: ``rollouts.queue_seq`` orders queued rollouts; a rollout leaves the queue
when dequeued. Spans added through the API keep their agentlightning record as given (JSON);
OTLP spans keep their protobuf. Each attempt keeps its span counter (``next_span_seq``), shared
by both paths; a new attempt starts from its rollout's highest, so numbers rise per rollout as
upstream's do. With start-time sequence ids, ``spans/next`` issues at least the current time in
microseconds, the sequence ids the OTLP path gives spans from their start times.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, Final, cast
from urllib.parse import quote

from ..errors import StoreUnavailable
from ..ids import new_attempt_id, new_resources_id, new_rollout_id
from . import views
from .api_schema import API_RESOURCE_ID
from .db import transaction
from .lightning import UNSET, FilterLogic, NotFound, Page, Query, Record, ScanNeeded, Unset
from .logs import joined_events
from .records import (
    ATTEMPT_COLUMNS,
    ROLLOUT_COLUMNS,
    SPAN_COLUMNS,
    attempt_record,
    enclosing_spans,
    json_or_none,
    resource_bodies,
    resources_record,
    rollout_record,
    span_records,
    worker_record,
)
from .sqlite import SQLiteStore, free_sequence_ids
from .views import current, spliced

FINISHED: Final = ("failed", "succeeded", "cancelled")
QUEUED: Final = ("queuing", "requeuing")
RUNNING: Final = ("preparing", "running")
DEFAULT_SCAN_DEBOUNCE: Final = 10.0

_WORKER_COLUMNS: Final = (
    "worker_id, status, heartbeat_stats, last_heartbeat_time, last_dequeue_time, last_busy_time,"
    " last_idle_time, current_rollout_id, current_attempt_id"
)
_RESOURCE_COLUMNS: Final = "resources_id, resources, create_time, update_time, version"
_ROLLOUT_SORT: Final = {
    "rollout_id": "str",
    "input": "raw",
    "start_time": "time",
    "end_time": "time",
    "mode": "str",
    "resources_id": "str",
    "status": "str",
    "config": "raw",
    "metadata": "raw",
}
_LIGHT_SPAN_FIELDS: Final = frozenset(
    ("rollout_id", "attempt_id", "sequence_id", "trace_id", "span_id", "parent_id", "name")
    + ("start_time", "end_time")
)
# What a read needs of a span first: where it is and whether it was added through the API (its
# record kept as given); then its view, or, without one, the whole row.
_SPAN_ROW: Final = ", ".join("s." + c.strip() for c in SPAN_COLUMNS.split(",")) + ", s.record"
_SPAN_LEAD: Final = (
    "s.rowid, s.rollout_id, s.attempt_id, s.sequence_id, s.trace_id, s.span_id,"
    " s.record IS NOT NULL"
)
_INSERT_API_SPAN: Final = (
    f"INSERT OR IGNORE INTO spans ({SPAN_COLUMNS}, record) VALUES ({', '.join('?' * 13)})"
)


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _id_key(value: str | None) -> Any:
    """Span ids as the OTLP path stores them (bytes) when they are hex, as given otherwise."""
    if value is None:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return value


def _id_text(value: Any) -> str | None:
    if value is None:
        return None
    return value.hex() if isinstance(value, bytes) else str(value)


def _sort_value(record: Record, field: str) -> Any:
    """Upstream's sort key: missing ``*_time`` last, other missing values as ''/0."""
    value = record.get(field)
    if field.endswith("_time"):
        return float("inf") if value is None else value
    if value is None:
        return 0 if field in ("sequence_id", "version") else ""
    return value


def _paginate(records: list[Record], query: Query) -> Page:
    return Page(_page_of(records, query), query.limit, query.offset, len(records))


def _page_of(records: list[Record], query: Query) -> list[Record]:
    if query.sort_by:
        key = query.sort_by
        records = sorted(
            records, key=lambda r: _sort_value(r, key), reverse=query.sort_order == "desc"
        )
    end = None if query.limit == -1 else query.offset + query.limit
    return records[query.offset : end]


def _order_sql(field: str, order: str) -> str:
    kind = _ROLLOUT_SORT[field]
    direction = "DESC" if order == "desc" else "ASC"
    if kind == "time":
        # NULL times sort as +infinity, as upstream's in-memory collections do.
        return f"({field} IS NULL) {direction}, {field} {direction}, rowid"
    if kind == "str":
        return f"COALESCE({field}, '') {direction}, rowid"
    return f"{field} {direction}, rowid"


def status_from_attempt(status: str, sequence_id: int, config: Record) -> str:
    """The rollout status an attempt's status implies (upstream ``rollout_status_from_attempt``)."""
    if status in ("preparing", "running", "succeeded"):
        return status
    if status in ("failed", "timeout", "unresponsive"):
        if status in (config.get("retry_condition") or []) and sequence_id < int(
            config.get("max_attempts") or 1
        ):
            return "requeuing"
        return "failed"
    raise ValueError(f"Invalid attempt status: {status}")


class SQLiteLightningStore:
    """agentlightning's LightningStore semantics over an opened ``SQLiteStore``'s connection.

    Args:
        store: the receiver's SQLite store; its connection and lock are shared.
        scan_debounce: seconds between watchdog scans (upstream's default is 10).
    """

    name: Final = "SQLiteLightningStore"

    def __init__(self, store: SQLiteStore, *, scan_debounce: float = DEFAULT_SCAN_DEBOUNCE) -> None:
        self.store = store
        self.scan_debounce = scan_debounce
        self._launch_time = time.time()
        self._last_scan = self._launch_time - scan_debounce
        # Reads of the API's read threads: each thread its own read-only connection.
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()

    # -- schema and transactions ---------------------------------------------------------

    def open(self) -> None:
        """Take over the attempt outcomes OTLP spans carry; the API's tables are the opened
        store's (its migration list has them)."""
        self.store.on_outcome = self._otlp_outcome

    def _otlp_outcome(
        self,
        conn: sqlite3.Connection,
        rollout_id: str,
        attempt_id: str,
        status: str,
        end_time: float,
        now: float,
    ) -> None:
        """An outcome an OTLP span reported (``agentlightning.attempt.status``, the rollout
        span's status): as ``update_attempt`` would apply it, so the rollout is retried as its
        ``RolloutConfig`` says and the attempt's worker goes idle; times are the span's."""
        self._update_attempt(conn, rollout_id, attempt_id, {"status": status}, now)
        conn.execute(
            "UPDATE attempts SET end_time = ? WHERE rollout_id = ? AND attempt_id = ?",
            (end_time, rollout_id, attempt_id),
        )
        conn.execute(  # finished by this outcome just now: it finished when the span ended
            "UPDATE rollouts SET end_time = ? WHERE rollout_id = ? AND end_time = ?",
            (end_time, rollout_id, now),
        )

    # -- reads apart ------------------------------------------------------------------------

    def reads_apart(self) -> bool:
        return self.store.path != ":memory:"

    @contextmanager
    def reading(self) -> Iterator[None]:
        self._local.reading = True
        try:
            yield
        finally:
            self._local.reading = False

    def scan_due(self) -> bool:
        return time.time() - self._last_scan >= self.scan_debounce

    def watch(self) -> None:
        with self._watched():
            pass

    def close_readers(self) -> None:
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # Read-only: a read thread can never write, whatever a query does.
            uri = "file:" + quote(os.path.abspath(self.store.path)) + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 2000")
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction on this thread's reader: one consistent view, beside the writer
        (SQLite's WAL lets readers and the writer work at once)."""
        try:
            conn = self._reader()
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"store busy or failing: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(f"store failing: {exc}") from exc

    def _transaction(self) -> Any:
        """One committed transaction, or nothing: SQLite errors become ``StoreUnavailable``; on
        a read thread (``reading``), a read transaction on its own connection."""
        if getattr(self._local, "reading", False):
            return self._snapshot()
        return self._write_transaction()

    @contextmanager
    def _write_transaction(self) -> Iterator[sqlite3.Connection]:
        with self.store.locked() as conn:
            try:
                with transaction(conn):
                    yield conn
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"store busy or failing: {exc}") from exc
            except sqlite3.DatabaseError as exc:
                raise StoreUnavailable(f"store failing: {exc}") from exc

    def _watched(self, *rollout_ids: str, everything: bool = False) -> Any:
        """A transaction that first runs the watchdog scan, as upstream's ``healthcheck_before``;
        ``rollout_ids``: the rollouts the query is about, checked whatever the debounce (every
        rollout with ``everything``). On a read thread, a read that first makes sure none of
        them is past a deadline (else ``ScanNeeded``: the call goes to the store thread)."""
        if getattr(self._local, "reading", False):
            return self._checked_snapshot(rollout_ids, everything)
        return _Watched(self, rollout_ids, everything)

    @contextmanager
    def _checked_snapshot(
        self, rollout_ids: Sequence[str], everything: bool
    ) -> Iterator[sqlite3.Connection]:
        with self._snapshot() as conn:
            if (everything or rollout_ids) and self._overdue(
                conn, time.time(), None if everything else rollout_ids
            ):
                raise ScanNeeded("an attempt the read is about is past its deadline")
            yield conn

    # -- statistics ------------------------------------------------------------------------

    def statistics(self) -> Record:
        with self._transaction() as conn:

            def count(table: str) -> int:
                return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

            return {
                "name": self.name,
                "total_rollouts": count("rollouts"),
                "total_attempts": count("attempts"),
                "total_spans": count("spans"),
                "total_resources": count("agl_resources"),
                "total_workers": count("agl_workers"),
                "uptime": time.time() - self._launch_time,
            }

    # -- rollouts --------------------------------------------------------------------------

    def start_rollout(
        self,
        input: Any,
        mode: str | None,
        resources_id: str | None,
        config: Record | None,
        metadata: Record | None,
        worker_id: str | None,
    ) -> Record:
        with self._watched() as conn:
            now = time.time()
            if resources_id is None:
                resources_id = self._latest_resources_id(conn)
            rollout_id = new_rollout_id()
            self._insert_rollout(
                conn, rollout_id, input, mode, resources_id, config, metadata, "preparing", now
            )
            attempt = self._new_attempt(conn, rollout_id, worker_id, now)
            if worker_id is not None:
                self._sync_worker(conn, attempt, dequeue=False, now=now)
            return {**self._rollout(conn, rollout_id), "attempt": attempt}

    def enqueue_rollouts(self, requests: Sequence[Record]) -> list[Record]:
        with self._watched() as conn:
            latest = self._latest_resources_id(conn)
            out = []
            for request in requests:
                rollout_id = new_rollout_id()
                resources_id = request.get("resources_id")
                self._insert_rollout(
                    conn,
                    rollout_id,
                    request.get("input"),
                    request.get("mode"),
                    resources_id if resources_id is not None else latest,
                    request.get("config"),
                    request.get("metadata"),
                    "queuing",
                    time.time(),  # each its own, as upstream: sorting by start time is stable
                )
                out.append(self._rollout(conn, rollout_id))
            return out

    def dequeue_rollouts(self, limit: int, worker_id: str | None) -> list[Record]:
        with self._watched() as conn:
            now = time.time()
            out: list[Record] = []
            while len(out) < limit:
                found = conn.execute(
                    # The queue's index, in queue order: the status index would sort them all.
                    "SELECT rollout_id, queue_seq FROM rollouts INDEXED BY rollouts_queue"
                    " WHERE queue_seq IS NOT NULL"
                    " AND status IN ('queuing', 'requeuing') ORDER BY queue_seq LIMIT 1"
                ).fetchone()
                if found is None:
                    break
                rollout_id, position = found
                # Entries ahead of it belong to rollouts no longer queuing: upstream pops and
                # drops those on the way.
                conn.execute(
                    "UPDATE rollouts SET queue_seq = NULL WHERE queue_seq IS NOT NULL"
                    " AND queue_seq <= ?",
                    (position,),
                )
                attempt = self._new_attempt(conn, rollout_id, worker_id, now)
                out.append({**self._rollout(conn, rollout_id), "attempt": attempt})
            if worker_id is not None:
                if out:
                    self._sync_worker(conn, out[-1]["attempt"], dequeue=True, now=now)
                else:
                    self._mark_idle(conn, worker_id, now)
            return out

    def start_attempt(self, rollout_id: str, worker_id: str | None) -> Record:
        with self._watched(rollout_id) as conn:
            now = time.time()
            if self._rollout_row(conn, rollout_id) is None:
                raise NotFound(f"Rollout {rollout_id} not found")
            attempt = self._new_attempt(conn, rollout_id, worker_id, now)
            if worker_id is not None:
                self._sync_worker(conn, attempt, dequeue=False, now=now)
            return {**self._rollout(conn, rollout_id), "attempt": attempt}

    def query_rollouts(
        self,
        *,
        status_in: Sequence[str] | None,
        rollout_id_in: Sequence[str] | None,
        rollout_id_contains: str | None,
        filter_logic: FilterLogic,
        query: Query,
    ) -> Page:
        conditions: list[str] = []
        params: list[Any] = []
        if status_in is not None:
            conditions.append(_within("status", status_in, params))
        if rollout_id_in is not None:
            conditions.append(_within("rollout_id", rollout_id_in, params))
        if rollout_id_contains is not None:
            conditions.append("instr(rollout_id, ?) > 0")
            params.append(rollout_id_contains)
        where = ""
        if conditions:
            where = "WHERE " + f" {'OR' if filter_logic == 'or' else 'AND'} ".join(
                f"({c})" for c in conditions
            )
        order = _order_sql(query.sort_by, query.sort_order) if query.sort_by else "rowid"
        page = "" if query.limit == -1 else f"LIMIT {int(query.limit)}"
        if query.offset:
            page = (page or "LIMIT -1") + f" OFFSET {int(query.offset)}"
        # A list by status must not show an attempt past its deadline as running: every
        # rollout is checked unless the query names its rollouts.
        with self._watched(*(rollout_id_in or ()), everything=rollout_id_in is None) as conn:
            total = int(
                conn.execute(f"SELECT COUNT(*) FROM rollouts {where}", params).fetchone()[0]
            )
            rows = conn.execute(
                f"SELECT {ROLLOUT_COLUMNS} FROM rollouts {where} ORDER BY {order} {page}", params
            ).fetchall()
            latest = self._latest_attempts(conn, [row[0] for row in rows])
        items = []
        for row in rows:
            record = rollout_record(row)
            attempt = latest.get(row[0])
            if attempt is not None:
                record["attempt"] = attempt
            items.append(record)
        return Page(items, query.limit, query.offset, total)

    def get_rollout(self, rollout_id: str) -> Record | None:
        with self._watched(rollout_id) as conn:
            if self._rollout_row(conn, rollout_id) is None:
                return None
            return self._rollout(conn, rollout_id)

    def update_rollout(self, rollout_id: str, fields: Record) -> Record:
        with self._watched(rollout_id) as conn:
            if self._rollout_row(conn, rollout_id) is None:
                raise NotFound(f"Rollout {rollout_id} not found")
            now = time.time()
            for name in ("input", "config", "metadata"):
                if name in fields:
                    conn.execute(
                        f"UPDATE rollouts SET {name} = ? WHERE rollout_id = ?",
                        (
                            _dump(fields[name]) if name != "input" else json.dumps(fields[name]),
                            rollout_id,
                        ),
                    )
            for name in ("mode", "resources_id"):
                if name in fields:
                    conn.execute(
                        f"UPDATE rollouts SET {name} = ? WHERE rollout_id = ?",
                        (fields[name], rollout_id),
                    )
            if "status" in fields:
                self._set_rollout_status(conn, rollout_id, fields["status"], now)
            return rollout_record(self._rollout_row(conn, rollout_id) or ())

    def finished_rollouts(self, rollout_ids: Sequence[str]) -> list[Record]:
        if not rollout_ids:
            return []
        with self._watched(*rollout_ids) as conn:
            params: list[Any] = []
            within = _within("rollout_id", rollout_ids, params)
            rows = conn.execute(
                f"SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE {within}"
                " AND status IN ('failed', 'succeeded', 'cancelled')",
                params,
            ).fetchall()
        found = {row[0]: rollout_record(row) for row in rows}
        return [found[r] for r in rollout_ids if r in found]

    # -- attempts --------------------------------------------------------------------------

    def query_attempts(self, rollout_id: str, query: Query) -> Page:
        with self._watched(rollout_id) as conn:
            rows = conn.execute(
                f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE rollout_id = ? ORDER BY rowid",
                (rollout_id,),
            ).fetchall()
        return _paginate([attempt_record(row) for row in rows], query)

    def get_latest_attempt(self, rollout_id: str) -> Record | None:
        with self._watched(rollout_id) as conn:
            return self._latest_attempt(conn, rollout_id)

    def update_attempt(self, rollout_id: str, attempt_id: str, fields: Record) -> Record:
        with self._watched(rollout_id) as conn:
            return self._update_attempt(conn, rollout_id, attempt_id, fields, time.time())

    # -- workers ---------------------------------------------------------------------------

    def query_workers(
        self,
        *,
        status_in: Sequence[str] | None,
        worker_id_contains: str | None,
        filter_logic: FilterLogic,
        query: Query,
    ) -> Page:
        tests: list[str] = []
        params: list[Any] = []
        if status_in is not None:
            tests.append(_within("status", status_in, params))
        if worker_id_contains is not None:
            tests.append("instr(worker_id, ?) > 0")
            params.append(worker_id_contains)
        where = f" WHERE {_combine(tests, filter_logic)}" if tests else ""
        with self._watched() as conn:
            rows = conn.execute(
                f"SELECT {_WORKER_COLUMNS} FROM agl_workers{where} ORDER BY rowid", params
            )
            workers = [worker_record(row) for row in rows]
        return _paginate(workers, query)

    def get_worker(self, worker_id: str) -> Record | None:
        with self._transaction() as conn:
            return self._worker(conn, worker_id)

    def update_worker(self, worker_id: str, heartbeat_stats: Record | Unset) -> Record:
        with self._transaction() as conn:
            values: dict[str, Any] = {"last_heartbeat_time": time.time()}
            if not isinstance(heartbeat_stats, Unset):
                values["heartbeat_stats"] = _dump(dict(heartbeat_stats))
            self._upsert_worker(conn, worker_id, values)
            return self._worker(conn, worker_id) or {}

    # -- resources -------------------------------------------------------------------------

    def add_resources(self, resources: Record) -> Record:
        with self._transaction() as conn:
            resources_id = new_resources_id()
            now = time.time()
            conn.execute(
                f"INSERT INTO agl_resources ({_RESOURCE_COLUMNS}, touched) VALUES (?, ?, ?, ?, 1,"
                " (SELECT COALESCE(MAX(touched), 0) + 1 FROM agl_resources))",
                (resources_id, json.dumps(resources), now, now),
            )
            return self._resources(conn, resources_id) or {}

    def update_resources(self, resources_id: str, resources: Record) -> Record:
        with self._watched() as conn:
            now = time.time()
            conn.execute(
                f"INSERT INTO agl_resources ({_RESOURCE_COLUMNS}, touched) VALUES (?, ?, ?, ?, 1,"
                " (SELECT COALESCE(MAX(touched), 0) + 1 FROM agl_resources))"
                " ON CONFLICT (resources_id) DO UPDATE SET resources = excluded.resources,"
                " update_time = excluded.update_time, version = version + 1,"
                " touched = excluded.touched",
                (resources_id, json.dumps(resources), now, now),
            )
            return self._resources(conn, resources_id) or {}

    def get_resources(self, resources_id: str) -> Record | None:
        with self._transaction() as conn:
            return self._resources(conn, resources_id)

    def get_latest_resources(self) -> Record | None:
        with self._transaction() as conn:
            latest = self._latest_resources_id(conn)
            return None if latest is None else self._resources(conn, latest)

    def query_resources(
        self, *, resources_id: str | None, resources_id_contains: str | None, query: Query
    ) -> Page:
        with self._transaction() as conn:
            rows = conn.execute(f"SELECT {_RESOURCE_COLUMNS} FROM agl_resources ORDER BY rowid")
            items = [resources_record(row) for row in rows]
        if resources_id is not None:
            items = [r for r in items if r["resources_id"] == resources_id]
        if resources_id_contains is not None:
            items = [r for r in items if resources_id_contains in r["resources_id"]]
        return _paginate(items, query)

    # -- spans -----------------------------------------------------------------------------

    def add_span(self, span: Record) -> Record | None:
        rollout_id = span["rollout_id"]
        attempt_id = span["attempt_id"]
        sequence_id = int(span["sequence_id"])
        with self._transaction() as conn:
            now = time.time()
            self._raise_counter(conn, rollout_id, attempt_id, sequence_id + 1)
            if self._rollout_row(conn, rollout_id) is None:
                raise NotFound(f"Rollout {rollout_id} not found")
            if self._attempt(conn, rollout_id, attempt_id) is None:
                raise NotFound(f"Attempt {attempt_id} not found for rollout {rollout_id}")
            status = span.get("status") or {}
            cursor = conn.execute(
                _INSERT_API_SPAN,
                (
                    rollout_id,
                    attempt_id,
                    sequence_id,
                    _id_key(span.get("trace_id")),
                    _id_key(span.get("span_id")),
                    _id_key(span.get("parent_id")),
                    span.get("name", ""),
                    span.get("start_time"),
                    span.get("end_time"),
                    status.get("status_code", "UNSET"),
                    b"",
                    API_RESOURCE_ID,
                    json.dumps(span),
                ),
            )
            if cursor.rowcount != 1:
                return None  # a duplicate: upstream logs it and returns None
            self._heartbeat(conn, rollout_id, attempt_id, now)
            return span

    def next_span_sequence_id(self, rollout_id: str, attempt_id: str) -> int:
        """The rollout's counter; with start-time sequence ids, now in microseconds if later
        (OTLP spans get their start, so spans asked for here, the LLM proxy's, sort among them
        by time whatever order they arrive in), kept as issued so no OTLP span takes it."""
        with self._transaction() as conn:
            value = self._rollout_counter(conn, rollout_id)
            if self.store.sequence_ids == "start-time":
                wanted = [max(value, int(time.time() * 1e6))]
                value = free_sequence_ids(conn, rollout_id, attempt_id, wanted)[0]
                conn.execute(
                    "INSERT OR IGNORE INTO span_issued (rollout_id, attempt_id, sequence_id)"
                    " VALUES (?, ?, ?)",
                    (rollout_id, attempt_id, value),
                )
            self._raise_counter(conn, rollout_id, attempt_id, value + 1)
            return value

    def query_spans(
        self,
        rollout_id: str,
        attempt_id: str | None,
        *,
        filters: dict[str, dict[str, str]],
        filter_logic: FilterLogic,
        query: Query,
        encoded: bool = False,
    ) -> Page:
        with self._watched(rollout_id) as conn:
            if attempt_id == "latest":
                latest = self._latest_attempt(conn, rollout_id)
                if latest is None:
                    return Page([], query.limit, query.offset, 0)
                attempt_id = latest["attempt_id"]
            sql = (
                "SELECT rowid, attempt_id, sequence_id, trace_id, span_id, parent_id, name,"
                " start_time, end_time FROM spans WHERE rollout_id = ?"
            )
            params: list[Any] = [rollout_id]
            if attempt_id is not None:
                sql += " AND attempt_id = ?"
                params.append(attempt_id)
            values: list[Any] = []
            tests = _span_tests(filters, values)
            if query.sort_by in (None, "sequence_id") and not tests:
                return self._spans_by_sequence(conn, params, query, encoded)
            if tests:  # SQLite filters: only the matching spans are read and built
                sql += f" AND ({_combine(tests, filter_logic)})"
                params.extend(values)
            light = [
                {
                    "rowid": r[0],
                    "rollout_id": rollout_id,
                    "attempt_id": r[1],
                    "sequence_id": r[2],
                    "trace_id": _id_text(r[3]),
                    "span_id": _id_text(r[4]),
                    "parent_id": _id_text(r[5]),
                    "name": r[6],
                    "start_time": r[7],
                    "end_time": r[8],
                }
                for r in conn.execute(sql + " ORDER BY rowid", params)
            ]
            if query.sort_by and query.sort_by not in _LIGHT_SPAN_FIELDS:
                # Sorting on a field only the full record has: decode everything first.
                rowids = [r["rowid"] for r in light]
                full = cast(list[Record], self._decode_spans(conn, rowids, False))
                return _paginate(full, query)
            page = _page_of(light, query)
            items = self._decode_spans(conn, [r["rowid"] for r in page], encoded)
        return Page(items, query.limit, query.offset, len(light))

    def _spans_by_sequence(
        self, conn: sqlite3.Connection, params: list[Any], query: Query, encoded: bool
    ) -> Page:
        """The common query (one rollout or attempt, in sequence order), paged by SQLite."""
        where = "s.rollout_id = ?" + (" AND s.attempt_id = ?" if len(params) > 1 else "")
        total = int(
            conn.execute(f"SELECT COUNT(*) FROM spans s WHERE {where}", params).fetchone()[0]
        )
        # Ties keep insertion order either way, as upstream's stable sort keeps them.
        order = "s.rowid"
        if query.sort_by:
            order = f"s.sequence_id {'DESC' if query.sort_order == 'desc' else 'ASC'}, s.rowid"
        page = "" if query.limit == -1 else f" LIMIT {int(query.limit)}"
        if query.offset:
            page = (page or " LIMIT -1") + f" OFFSET {int(query.offset)}"
        leads = conn.execute(
            f"SELECT {_SPAN_LEAD} FROM spans s WHERE {where} ORDER BY {order}{page}",
            params,
        ).fetchall()
        return Page(self._records(conn, leads, encoded), query.limit, query.offset, total)

    def _records(
        self, conn: sqlite3.Connection, leads: list[Any], encoded: bool
    ) -> list[Record | bytes]:
        """Spans (rows of ``_SPAN_LEAD``) as agentlightning ``Span`` dicts, model calls
        translated as the store's own reader gives them (``lightning-otlp spans``); with
        ``encoded``, a span with a current view is its JSON (``store.views``), ready to send.
        Only spans without one are read whole and built."""
        logs = None
        enclosing: set[tuple[bytes, bytes]] = set()
        if self.store.translate:
            traces = {lead[4] for lead in leads if not lead[6]}
            logs = joined_events(conn, traces)
            enclosing = enclosing_spans(conn, traces)
        bodies: dict[int, bytes] = {}
        if encoded and logs is not None:
            bodies = current(
                conn,
                {
                    lead[0]: lead[5]
                    for lead in leads
                    if not lead[6]
                    and (lead[4], lead[5]) not in logs
                    and (lead[4], lead[5]) not in enclosing
                },
            )
        out: list[Record | bytes | None] = []
        build: dict[int, int] = {}  # position in ``out``: rowid
        for lead in leads:
            body = bodies.get(lead[0])
            if body is not None:
                out.append(spliced(lead[1], lead[2], lead[3], body))
            else:
                build[len(out)] = lead[0]
                out.append(None)
        # On a read thread, building is paced (``store.views``): a read of a whole rollout
        # cannot take the interpreter from ingest. The store thread never waits.
        paced = getattr(self._local, "reading", False)
        todo = list(build.items())
        for start in range(0, len(todo), views.BUILD_CHUNK):
            with views.READ_PACE.turn() if paced else nullcontext():
                chunk = todo[start : start + views.BUILD_CHUNK]
                rows = self._full_rows(conn, [rowid for _, rowid in chunk])
                wanted = {row[11] for row in rows.values() if row[12] is None}
                resources = resource_bodies(conn, wanted)
                for i, rowid in chunk:
                    out[i] = span_records(rows[rowid], resources, logs, enclosing)
        return cast(list[Record | bytes], out)

    @staticmethod
    def _full_rows(conn: sqlite3.Connection, rowids: list[int]) -> dict[int, Any]:
        """Spans rows (``SPAN_COLUMNS`` then ``record``) by rowid."""
        rows = _span_rows(conn, f"s.rowid, {_SPAN_ROW}", rowids)
        return {rowid: row[1:] for rowid, row in rows.items()}

    def _decode_spans(
        self, conn: sqlite3.Connection, rowids: list[int], encoded: bool
    ) -> list[Record | bytes]:
        leads = _span_rows(conn, _SPAN_LEAD, rowids)
        return self._records(conn, [leads[rowid] for rowid in rowids], encoded)

    # -- the watchdog ----------------------------------------------------------------------

    def scan(
        self,
        conn: sqlite3.Connection,
        now: float,
        force: bool = False,
        rollout_ids: Sequence[str] = (),
    ) -> None:
        """Time out and mark unresponsive the latest attempts of running rollouts: all of them
        once per ``scan_debounce``, and always those of ``rollout_ids``, the rollouts a query
        is about, so it never answers with an attempt past its deadline."""
        if force or now - self._last_scan >= self.scan_debounce:
            self._last_scan = now
            rows = self._overdue(conn, now, None)
        elif rollout_ids:
            rows = self._overdue(conn, now, rollout_ids)
        else:
            return
        for rollout_id, config_text, attempt_id, start, heartbeat in rows:
            config = json_or_none(config_text) or {}
            timeout = config.get("timeout_seconds")
            unresponsive = config.get("unresponsive_seconds")
            status = None
            if timeout is not None and now - start > timeout:
                status = "timeout"
            elif unresponsive is not None and now - (heartbeat or start) > unresponsive:
                status = "unresponsive"
            if status is not None:
                self._update_attempt(conn, rollout_id, attempt_id, {"status": status}, now)

    def _overdue(
        self, conn: sqlite3.Connection, now: float, rollout_ids: Sequence[str] | None
    ) -> list[Any]:
        """The latest attempts of running rollouts (of ``rollout_ids``; None: all) past a
        deadline: a scan reads no config it does not act on."""
        if rollout_ids is None:
            return conn.execute(_OVERDUE, (now, now)).fetchall()
        rows: list[Any] = []
        for chunk in _chunks(list(dict.fromkeys(rollout_ids))):
            marks = ", ".join("?" * len(chunk))
            rows += conn.execute(
                f"{_OVERDUE} AND r.rollout_id IN ({marks})", (now, now, *chunk)
            ).fetchall()
        return rows

    # -- internals -------------------------------------------------------------------------

    def _insert_rollout(
        self,
        conn: sqlite3.Connection,
        rollout_id: str,
        input: Any,
        mode: str | None,
        resources_id: str | None,
        config: Record | None,
        metadata: Record | None,
        status: str,
        now: float,
    ) -> None:
        queued = status in QUEUED
        conn.execute(
            "INSERT INTO rollouts (rollout_id, input, start_time, mode, resources_id, status,"
            " config, metadata, origin, managed, created_at, queue_seq) VALUES (?, ?, ?, ?, ?, ?,"
            " ?, ?, 'explicit', 1, ?, CASE WHEN ? THEN"
            " (SELECT COALESCE(MAX(queue_seq), 0) + 1 FROM rollouts WHERE queue_seq IS NOT NULL)"
            " END)",
            (
                rollout_id,
                json.dumps(input),
                now,
                mode,
                resources_id,
                status,
                json.dumps(config if config is not None else _default_config()),
                json.dumps(dict(metadata) if metadata is not None else {}),
                now,
                queued,
            ),
        )

    @staticmethod
    def _rollout_row(conn: sqlite3.Connection, rollout_id: str) -> Any:
        return conn.execute(
            f"SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE rollout_id = ?", (rollout_id,)
        ).fetchone()

    def _rollout(self, conn: sqlite3.Connection, rollout_id: str) -> Record:
        """The rollout with its latest attempt attached, when it has one."""
        record = rollout_record(self._rollout_row(conn, rollout_id))
        attempt = self._latest_attempt(conn, rollout_id)
        if attempt is not None:
            record["attempt"] = attempt
        return record

    @staticmethod
    def _attempt(conn: sqlite3.Connection, rollout_id: str, attempt_id: str) -> Record | None:
        row = conn.execute(
            f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE rollout_id = ? AND attempt_id = ?",
            (rollout_id, attempt_id),
        ).fetchone()
        return None if row is None else attempt_record(row)

    @staticmethod
    def _latest_attempt(conn: sqlite3.Connection, rollout_id: str) -> Record | None:
        row = conn.execute(
            f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE rollout_id = ?"
            " ORDER BY sequence_id DESC LIMIT 1",
            (rollout_id,),
        ).fetchone()
        return None if row is None else attempt_record(row)

    @staticmethod
    def _latest_attempts(conn: sqlite3.Connection, rollout_ids: list[str]) -> dict[str, Record]:
        latest: dict[str, Record] = {}
        for start in range(0, len(rollout_ids), 500):
            chunk = rollout_ids[start : start + 500]
            for row in conn.execute(
                f"SELECT {ATTEMPT_COLUMNS} FROM attempts"
                f" WHERE rollout_id IN ({', '.join('?' * len(chunk))})"
                " ORDER BY rollout_id, sequence_id",
                chunk,
            ):
                latest[row[0]] = attempt_record(row)
        return latest

    def _new_attempt(
        self, conn: sqlite3.Connection, rollout_id: str, worker_id: str | None, now: float
    ) -> Record:
        """A ``preparing`` attempt numbered after the rollout's others; the rollout follows it."""
        attempt_id = new_attempt_id()
        counter = self._rollout_counter(conn, rollout_id)
        conn.execute(
            "INSERT INTO attempts (rollout_id, attempt_id, sequence_id, start_time, status,"
            " worker_id, next_span_seq) VALUES (?, ?,"
            " (SELECT COUNT(*) + 1 FROM attempts WHERE rollout_id = ?), ?, 'preparing', ?, ?)",
            (rollout_id, attempt_id, rollout_id, now, worker_id, counter),
        )
        self._set_rollout_status(conn, rollout_id, "preparing", now)
        attempt = self._attempt(conn, rollout_id, attempt_id)
        assert attempt is not None
        return attempt

    @staticmethod
    def _rollout_counter(conn: sqlite3.Connection, rollout_id: str) -> int:
        """The next span sequence id of the rollout: the highest of its attempts' counters."""
        row = conn.execute(
            "SELECT MAX(COALESCE((SELECT MAX(next_span_seq) FROM attempts"
            " WHERE rollout_id = ?), 1), COALESCE((SELECT next_seq FROM agl_span_counters"
            " WHERE rollout_id = ?), 1))",
            (rollout_id, rollout_id),
        ).fetchone()
        return int(row[0])

    @staticmethod
    def _raise_counter(
        conn: sqlite3.Connection, rollout_id: str, attempt_id: str, at_least: int
    ) -> None:
        conn.execute(
            "UPDATE attempts SET next_span_seq = MAX(next_span_seq, ?)"
            " WHERE rollout_id = ? AND attempt_id = ?",
            (at_least, rollout_id, attempt_id),
        )
        conn.execute(
            "INSERT INTO agl_span_counters (rollout_id, next_seq) VALUES (?, ?)"
            " ON CONFLICT (rollout_id) DO UPDATE SET next_seq = MAX(next_seq, excluded.next_seq)",
            (rollout_id, at_least),
        )

    def _set_rollout_status(
        self, conn: sqlite3.Connection, rollout_id: str, status: str, now: float
    ) -> None:
        """Status, end time when finished, and back into the queue when (re)queuing."""
        conn.execute(
            "UPDATE rollouts SET status = ?,"
            " end_time = CASE WHEN ? THEN ? ELSE end_time END,"
            " queue_seq = CASE WHEN ? AND queue_seq IS NULL THEN"
            "  (SELECT COALESCE(MAX(queue_seq), 0) + 1 FROM rollouts WHERE queue_seq IS NOT NULL)"
            " ELSE queue_seq END"
            " WHERE rollout_id = ?",
            (status, status in FINISHED, now, status in QUEUED, rollout_id),
        )

    def _update_attempt(
        self,
        conn: sqlite3.Connection,
        rollout_id: str,
        attempt_id: str,
        fields: Record,
        now: float,
    ) -> Record:
        rollout = self._rollout_row(conn, rollout_id)
        if rollout is None:
            raise NotFound(f"Rollout {rollout_id} not found")
        latest = self._latest_attempt(conn, rollout_id)
        if latest is None:
            raise NotFound(f"No attempts found for rollout {rollout_id}")
        if attempt_id == "latest":
            attempt = latest
        else:
            found = self._attempt(conn, rollout_id, attempt_id)
            if found is None:
                raise NotFound(f"Attempt {attempt_id} not found for rollout {rollout_id}")
            attempt = found
        sync = False
        if "worker_id" in fields:
            attempt["worker_id"] = fields["worker_id"]
            sync = sync or bool(fields["worker_id"])
        if "status" in fields:
            attempt["status"] = fields["status"]
            if fields["status"] in ("failed", "succeeded"):
                attempt["end_time"] = now
            sync = sync or bool(attempt["worker_id"])
        if "last_heartbeat_time" in fields:
            attempt["last_heartbeat_time"] = fields["last_heartbeat_time"]
        if "metadata" in fields:
            attempt["metadata"] = fields["metadata"]
        conn.execute(
            "UPDATE attempts SET status = ?, end_time = ?, worker_id = ?, last_heartbeat_time = ?,"
            " metadata = ? WHERE rollout_id = ? AND attempt_id = ?",
            (
                attempt["status"],
                attempt["end_time"],
                attempt["worker_id"],
                attempt["last_heartbeat_time"],
                _dump(attempt["metadata"]),
                rollout_id,
                attempt["attempt_id"],
            ),
        )
        if attempt["attempt_id"] == latest["attempt_id"]:
            config = json_or_none(rollout[7]) or {}
            status = status_from_attempt(attempt["status"], attempt["sequence_id"], config)
            if status != rollout[6]:
                self._set_rollout_status(conn, rollout_id, status, now)
        if sync:
            self._sync_worker(conn, attempt, dequeue=False, now=now)
        return attempt

    def _heartbeat(
        self, conn: sqlite3.Connection, rollout_id: str, attempt_id: str, now: float
    ) -> None:
        """A stored span is a heartbeat: the attempt runs, and so does a preparing rollout."""
        conn.execute(
            "UPDATE attempts SET last_heartbeat_time = ?, status = CASE WHEN status IN"
            " ('preparing', 'unresponsive') THEN 'running' ELSE status END"
            " WHERE rollout_id = ? AND attempt_id = ?",
            (now, rollout_id, attempt_id),
        )
        latest = self._latest_attempt(conn, rollout_id)
        if latest is not None and latest["attempt_id"] == attempt_id:
            # Upstream spells the queuing state "queueing" here, so a queuing rollout stays put.
            conn.execute(
                "UPDATE rollouts SET status = 'running'"
                " WHERE rollout_id = ? AND status IN ('preparing', 'requeuing')",
                (rollout_id,),
            )

    @staticmethod
    def _worker(conn: sqlite3.Connection, worker_id: str) -> Record | None:
        row = conn.execute(
            f"SELECT {_WORKER_COLUMNS} FROM agl_workers WHERE worker_id = ?", (worker_id,)
        ).fetchone()
        return None if row is None else worker_record(row)

    @staticmethod
    def _upsert_worker(conn: sqlite3.Connection, worker_id: str, values: dict[str, Any]) -> None:
        conn.execute("INSERT OR IGNORE INTO agl_workers (worker_id) VALUES (?)", (worker_id,))
        if values:
            assignments = ", ".join(f"{name} = ?" for name in values)
            conn.execute(
                f"UPDATE agl_workers SET {assignments} WHERE worker_id = ?",
                (*values.values(), worker_id),
            )

    def _sync_worker(
        self, conn: sqlite3.Connection, attempt: Record, *, dequeue: bool, now: float
    ) -> None:
        """The worker's status follows the attempt it holds (upstream's worker sync)."""
        worker_id = attempt.get("worker_id")
        if not worker_id:
            return
        values: dict[str, Any] = {}
        if dequeue:
            values["last_dequeue_time"] = now
        status = attempt["status"]
        if status in ("succeeded", "failed"):
            values.update(last_idle_time=now, status="idle")
            values.update(current_rollout_id=None, current_attempt_id=None)
        elif status in ("timeout", "unresponsive"):
            values.update(last_idle_time=now, status="unknown")
            values.update(current_rollout_id=None, current_attempt_id=None)
        else:
            values.update(last_busy_time=now, status="busy")
            values.update(
                current_rollout_id=attempt["rollout_id"], current_attempt_id=attempt["attempt_id"]
            )
        self._upsert_worker(conn, worker_id, values)

    def _mark_idle(self, conn: sqlite3.Connection, worker_id: str, now: float) -> None:
        worker = self._worker(conn, worker_id)
        if worker is None or worker["status"] != "idle":
            values = {"status": "idle", "last_idle_time": now, "last_dequeue_time": now}
            self._upsert_worker(conn, worker_id, values)
        else:
            self._upsert_worker(conn, worker_id, {"last_dequeue_time": now})

    @staticmethod
    def _resources(conn: sqlite3.Connection, resources_id: str) -> Record | None:
        row = conn.execute(
            f"SELECT {_RESOURCE_COLUMNS} FROM agl_resources WHERE resources_id = ?",
            (resources_id,),
        ).fetchone()
        return None if row is None else resources_record(row)

    @staticmethod
    def _latest_resources_id(conn: sqlite3.Connection) -> str | None:
        row = conn.execute(
            "SELECT resources_id FROM agl_resources ORDER BY touched DESC LIMIT 1"
        ).fetchone()
        return None if row is None else str(row[0])


_OVERDUE: Final = (
    "SELECT r.rollout_id, r.config, a.attempt_id, a.start_time, a.last_heartbeat_time"
    " FROM rollouts r JOIN attempts a ON a.rollout_id = r.rollout_id"
    " AND a.sequence_id = (SELECT MAX(sequence_id) FROM attempts"
    "   WHERE rollout_id = r.rollout_id)"
    " WHERE r.status IN ('preparing', 'running')"
    " AND (? - a.start_time > json_extract(r.config, '$.timeout_seconds')"
    "  OR ? - COALESCE(a.last_heartbeat_time, a.start_time)"
    "   > json_extract(r.config, '$.unresponsive_seconds'))"
)


class _Watched:
    """``with store._watched() as conn``: a transaction that starts with the watchdog scan."""

    def __init__(
        self, owner: SQLiteLightningStore, rollout_ids: Sequence[str], everything: bool
    ) -> None:
        self._owner = owner
        self._rollout_ids = rollout_ids
        self._everything = everything
        self._context: Any = None

    def __enter__(self) -> sqlite3.Connection:
        self._context = self._owner._write_transaction()
        conn: sqlite3.Connection = self._context.__enter__()
        try:
            self._owner.scan(conn, time.time(), self._everything, self._rollout_ids)
        except BaseException as exc:
            # Inside the transaction: rolled back, the lock let go, and the error mapped as any
            # other (a failing store is 503, not a defect).
            if not self._context.__exit__(type(exc), exc, exc.__traceback__):
                raise
        return conn

    def __exit__(self, *exc: Any) -> Any:
        return self._context.__exit__(*exc)


def _default_config() -> Record:
    return {
        "timeout_seconds": None,
        "unresponsive_seconds": None,
        "max_attempts": 1,
        "retry_condition": [],
    }


def _within(column: str, values: Sequence[str], params: list[Any]) -> str:
    values = list(values)
    if not values:
        return "0"
    params.extend(values)
    return f"{column} IN ({', '.join('?' * len(values))})"


def _chunks(items: list[Any]) -> Iterator[list[Any]]:
    """``items`` in slices small enough for one statement's parameters."""
    for start in range(0, len(items), 500):
        yield items[start : start + 500]


def _span_rows(conn: sqlite3.Connection, columns: str, rowids: list[int]) -> dict[int, Any]:
    """``columns`` (the first one ``s.rowid``) of these spans, by rowid."""
    rows: dict[int, Any] = {}
    for start in range(0, len(rowids), 500):
        chunk = rowids[start : start + 500]
        for row in conn.execute(
            f"SELECT {columns} FROM spans s WHERE s.rowid IN ({', '.join('?' * len(chunk))})",
            chunk,
        ):
            rows[row[0]] = row
    return rows


# A span id column as upstream's records show it: stored bytes (OTLP) as lowercase hex, text
# (API spans) as it is.
_ID_AS_TEXT: Final = "CASE WHEN typeof({0}) = 'blob' THEN lower(hex({0})) ELSE {0} END"


def _span_tests(filters: dict[str, dict[str, str]], params: list[Any]) -> list[str]:
    """Upstream's span filters (exact and contains per field) as SQL conditions; their
    values are added to ``params``."""
    tests: list[str] = []
    for field, ops in filters.items():
        column = field if field == "name" else _ID_AS_TEXT.format(field)
        for op, expected in ops.items():
            if expected is None:
                continue
            tests.append(f"{column} = ?" if op == "exact" else f"instr({column}, ?) > 0")
            params.append(expected)
    return tests


def _combine(tests: list[str], logic: FilterLogic) -> str:
    """Conditions pooled as upstream pools them, ``and`` / ``or`` (NULL counts as false)."""
    return f" {'OR' if logic == 'or' else 'AND'} ".join(f"COALESCE({t}, 0)" for t in tests)


__all__ = ["UNSET", "SQLiteLightningStore", "rollout_record", "status_from_attempt"]
