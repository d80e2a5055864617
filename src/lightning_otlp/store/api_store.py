"""The LightningStore API over any SQL store: upstream's calls as transactions of the lifecycle
(``store.lifecycle``), the same for every backend.

A backend supplies storage, not policy (``SQLBackend``): write transactions, read snapshots apart
from the writer, retries of a transaction another one conflicted with, and a claim on work that
runs once for all the processes sharing the store (the watchdog). Spans are
``store.api_spans``'s, workers and resources ``store.api_workers``'s.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Final

from ..ids import new_rollout_id
from . import lifecycle as life
from .api_base import SQLBackend, limit_sql, paginate, retried
from .api_spans import SpansAPI
from .api_workers import WorkersAPI, latest_resources_id
from .dialect import Conn, within
from .lightning import UNSET, FilterLogic, NotFound, Page, Query, Record, ScanNeeded
from .records import ATTEMPT_COLUMNS, ROLLOUT_COLUMNS, attempt_record
from .records import rollout_record as rollout_record
from .span_reads import ReadCache

DEFAULT_SCAN_DEBOUNCE: Final = 10.0
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


def _order_sql(field: str, order: str) -> str:
    kind = _ROLLOUT_SORT[field]
    direction = "DESC" if order == "desc" else "ASC"
    if kind == "time":
        # NULL times sort as +infinity, as upstream's in-memory collections do.
        return f"({field} IS NULL) {direction}, {field} {direction}, rowid"
    if kind == "str":
        return f"COALESCE({field}, '') {direction}, rowid"
    return f"{field} {direction}, rowid"


class SQLLightningStore(SpansAPI, WorkersAPI):
    """agentlightning's LightningStore semantics over an opened SQL store.

    Args:
        store: the receiver's store; its transactions are the API's.
        scan_debounce: seconds between watchdog scans (upstream's default is 10).
        clock: the time in seconds since the epoch; every time the API reads (start and end
            times, heartbeats, deadlines) comes from it, so tests can move it on.
    """

    name = "SQLiteLightningStore"

    def __init__(
        self,
        store: SQLBackend,
        *,
        scan_debounce: float = DEFAULT_SCAN_DEBOUNCE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.scan_debounce = scan_debounce
        self.clock = clock
        self._launch_time = clock()
        self._last_scan = self._launch_time - scan_debounce
        self._local = threading.local()
        self.read_cache = ReadCache()

    def open(self) -> None:
        """Nothing to take over: the store applies OTLP-carried outcomes by the same rule."""

    # -- reads apart ------------------------------------------------------------------------

    def reads_apart(self) -> bool:
        return self.store.reads_apart()

    @contextmanager
    def reading(self) -> Iterator[None]:
        self._local.reading = True
        try:
            yield
        finally:
            self._local.reading = False

    def _reading(self) -> bool:
        return bool(getattr(self._local, "reading", False))

    def scan_due(self) -> bool:
        return self.clock() - self._last_scan >= self.scan_debounce

    @retried
    def watch(self) -> None:
        with self._watched():
            pass

    def close_readers(self) -> None:
        self.store.close_readers()

    def _transaction(self) -> AbstractContextManager[Conn]:
        """One committed transaction, or nothing; on a read thread (``reading``), a read-only
        snapshot apart from the writer."""
        return self.store.snapshot() if self._reading() else self._write()

    def _write(self, queue: bool = False) -> AbstractContextManager[Conn]:
        """One call's write transaction; ``queue``: one that takes from the queue."""
        return self.store.transaction()

    @contextmanager
    def _watched(
        self, *rollout_ids: str, everything: bool = False, queue: bool = False
    ) -> Iterator[Conn]:
        """A transaction that first runs the watchdog scan, as upstream's ``healthcheck_before``;
        ``rollout_ids``: the rollouts the query is about, checked whatever the debounce (every
        rollout with ``everything``). On a read thread, a read that first makes sure none of
        them is past a deadline (else ``ScanNeeded``: the call goes to the write thread)."""
        if self._reading():
            with self.store.snapshot() as conn:
                checks = []
                if everything or rollout_ids:
                    now = self.clock()
                    checks = life.overdue_sent(conn, now, None if everything else rollout_ids)
                yield conn
                # Read after the read it guards, whose answer came with it (one round trip):
                # a read that met an attempt past its deadline is dropped and done again.
                if any(check.fetchall() for check in checks):
                    raise ScanNeeded("an attempt the read is about is past its deadline")
            return
        with self._write(queue) as conn:
            self.scan(conn, self.clock(), everything, rollout_ids)
            yield conn

    def scan(
        self, conn: Conn, now: float, force: bool = False, rollout_ids: Sequence[str] = ()
    ) -> None:
        """Time out and mark unresponsive the latest attempts of running rollouts: all of them
        once per ``scan_debounce`` (for all receivers sharing the store), and always those of
        ``rollout_ids``, the rollouts a query is about, so it never answers with an attempt
        past its deadline."""
        rows = None
        if force or now - self._last_scan >= self.scan_debounce:
            self._last_scan = now
            if force:
                rows = life.overdue(conn, now, None)
            elif self.store.claim(conn, "watchdog", self.scan_debounce, now):
                rows = self._overdue_anywhere(conn, now)
        if rows is None and rollout_ids:
            rows = life.overdue(conn, now, rollout_ids)
        if rows:
            life.time_out(conn, rows, now)

    def _overdue_anywhere(self, conn: Conn, now: float) -> list[Any]:
        """The periodic scan's finds. Where processes share the store, the rollouts are looked
        over in a read-only snapshot and only those found are read again (by key) in the
        transaction: a serializable read of every running rollout marks pages that every
        status change writes, so the call that scans, and others, would run again. A rollout
        that fell due after the snapshot is found by the next scan, or checked by the first
        call about it (``rollout_ids`` above), as one that falls due between two scans is."""
        if not conn.dialect.shared:
            return life.overdue(conn, now, None)
        with self.store.snapshot() as seen:
            found = [row[0] for row in life.overdue(seen, now, None)]
        return life.overdue(conn, now, found) if found else []

    # -- statistics ------------------------------------------------------------------------

    @retried
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
                "uptime": self.clock() - self._launch_time,
            }

    # -- rollouts --------------------------------------------------------------------------

    @retried
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
            now = self.clock()
            if resources_id is None:
                resources_id = latest_resources_id(conn)
            rollout_id = new_rollout_id()
            life.insert_rollout(
                conn, rollout_id, input, mode, resources_id, config, metadata, "preparing", now
            )
            started = life.started_rollout(conn, rollout_id, worker_id, now)
            if worker_id is not None:
                life.sync_worker(conn, started["attempt"], dequeue=False, now=now)
            return started

    @retried
    def enqueue_rollouts(self, requests: Sequence[Record]) -> list[Record]:
        with self._watched() as conn:
            latest = latest_resources_id(conn)
            out = []
            for request in requests:
                rollout_id = new_rollout_id()
                resources_id = request.get("resources_id")
                inserted = life.insert_rollout(
                    conn,
                    rollout_id,
                    request.get("input"),
                    request.get("mode"),
                    resources_id if resources_id is not None else latest,
                    request.get("config"),
                    request.get("metadata"),
                    "queuing",
                    self.clock(),  # each its own, as upstream: sorting by start time is stable
                )
                # Just queued: it has no attempt yet.
                out.append(rollout_record(inserted.fetchone()))
            return out

    @retried
    def dequeue_rollouts(self, limit: int, worker_id: str | None) -> list[Record]:
        with self._watched(queue=True) as conn:
            now = self.clock()
            out: list[Record] = []
            while len(out) < limit:
                rollout_id = life.take_from_queue(conn)
                if rollout_id is None:
                    break
                out.append(life.started_rollout(conn, rollout_id, worker_id, now))
            if worker_id is not None:
                if out:
                    life.sync_worker(conn, out[-1]["attempt"], dequeue=True, now=now)
                else:
                    life.mark_idle(conn, worker_id, now)
            return out

    @retried
    def start_attempt(self, rollout_id: str, worker_id: str | None) -> Record:
        with self._watched(rollout_id) as conn:
            now = self.clock()
            if life.rollout_row(conn, rollout_id) is None:
                raise NotFound(f"Rollout {rollout_id} not found")
            started = life.started_rollout(conn, rollout_id, worker_id, now)
            if worker_id is not None:
                life.sync_worker(conn, started["attempt"], dequeue=False, now=now)
            return started

    @retried
    def query_rollouts(
        self,
        *,
        status_in: Sequence[str] | None,
        rollout_id_in: Sequence[str] | None,
        rollout_id_contains: str | None,
        filter_logic: FilterLogic,
        query: Query,
    ) -> Page:
        # A list by status must not show an attempt past its deadline as running: every
        # rollout is checked unless the query names its rollouts.
        with self._watched(*(rollout_id_in or ()), everything=rollout_id_in is None) as conn:
            conditions: list[str] = []
            params: list[Any] = []
            if status_in is not None:
                conditions.append(within("status", status_in, params))
            if rollout_id_in is not None:
                conditions.append(within("rollout_id", rollout_id_in, params))
            if rollout_id_contains is not None:
                conditions.append(conn.dialect.contains("rollout_id"))
                params.append(rollout_id_contains)
            where = ""
            if conditions:
                where = "WHERE " + f" {'OR' if filter_logic == 'or' else 'AND'} ".join(
                    f"({c})" for c in conditions
                )
            order = _order_sql(query.sort_by, query.sort_order) if query.sort_by else "rowid"
            total = int(
                conn.execute(f"SELECT COUNT(*) FROM rollouts {where}", params).fetchone()[0]
            )
            rows = conn.execute(
                f"SELECT {ROLLOUT_COLUMNS} FROM rollouts {where} ORDER BY {order}"
                + limit_sql(conn, query),
                params,
            ).fetchall()
            latest = life.latest_attempts(conn, [row[0] for row in rows])
        items = []
        for row in rows:
            record = rollout_record(row)
            attempt = latest.get(row[0])
            if attempt is not None:
                record["attempt"] = attempt
            items.append(record)
        return Page(items, query.limit, query.offset, total)

    @retried
    def get_rollout(self, rollout_id: str) -> Record | None:
        with self._watched(rollout_id) as conn:
            if life.rollout_row(conn, rollout_id) is None:
                return None
            return life.rollout(conn, rollout_id)

    @retried
    def update_rollout(self, rollout_id: str, fields: Record) -> Record:
        with self._watched(rollout_id) as conn:
            if life.rollout_row(conn, rollout_id) is None:
                raise NotFound(f"Rollout {rollout_id} not found")
            now = self.clock()
            for name in ("input", "config", "metadata"):
                if name in fields:
                    conn.execute(
                        f"UPDATE rollouts SET {name} = ? WHERE rollout_id = ?",
                        (
                            life.dump(fields[name])
                            if name != "input"
                            else json.dumps(fields[name]),
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
                life.set_rollout_status(conn, rollout_id, fields["status"], now)
            return rollout_record(life.rollout_row(conn, rollout_id) or ())

    @retried
    def finished_rollouts(self, rollout_ids: Sequence[str]) -> list[Record]:
        if not rollout_ids:
            return []
        with self._watched(*rollout_ids) as conn:
            params: list[Any] = []
            test = within("rollout_id", rollout_ids, params)
            rows = conn.execute(
                f"SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE {test}"
                " AND status IN ('failed', 'succeeded', 'cancelled')",
                params,
            ).fetchall()
        found = {row[0]: rollout_record(row) for row in rows}
        return [found[r] for r in rollout_ids if r in found]

    # -- attempts --------------------------------------------------------------------------

    @retried
    def query_attempts(self, rollout_id: str, query: Query) -> Page:
        with self._watched(rollout_id) as conn:
            rows = conn.execute(
                f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE rollout_id = ? ORDER BY rowid",
                (rollout_id,),
            ).fetchall()
        return paginate([attempt_record(row) for row in rows], query)

    @retried
    def get_latest_attempt(self, rollout_id: str) -> Record | None:
        with self._watched(rollout_id) as conn:
            return life.latest_attempt(conn, rollout_id)

    @retried
    def update_attempt(self, rollout_id: str, attempt_id: str, fields: Record) -> Record:
        with self._watched(rollout_id) as conn:
            return life.update_attempt(conn, rollout_id, attempt_id, fields, self.clock())


__all__ = ["UNSET", "SQLBackend", "SQLLightningStore", "retried", "rollout_record"]
