"""The LightningStore API's workers and resources calls over any SQL store: workers as their
heartbeats and the lifecycle leave them, resources as versioned rows, the latest by last write.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Final

from ..ids import new_resources_id
from . import lifecycle as life
from .api_base import combine, paginate, retried
from .dialect import Conn, within
from .lightning import FilterLogic, Page, Query, Record, Unset
from .records import resources_record, worker_record

_RESOURCE_COLUMNS: Final = "resources_id, resources, create_time, update_time, version"


class WorkersAPI:
    """The workers and resources calls; the rest of the API (``store.api_store``) supplies its
    transactions."""

    clock: Callable[[], float]

    def _transaction(self) -> AbstractContextManager[Conn]:
        raise NotImplementedError

    def _watched(self, *rollout_ids: str, everything: bool = False) -> AbstractContextManager[Conn]:
        raise NotImplementedError

    # -- workers ---------------------------------------------------------------------------

    @retried
    def query_workers(
        self,
        *,
        status_in: Sequence[str] | None,
        worker_id_contains: str | None,
        filter_logic: FilterLogic,
        query: Query,
    ) -> Page:
        with self._watched() as conn:
            tests: list[str] = []
            params: list[Any] = []
            if status_in is not None:
                tests.append(within("status", status_in, params))
            if worker_id_contains is not None:
                tests.append(conn.dialect.contains("worker_id"))
                params.append(worker_id_contains)
            where = f" WHERE {combine(tests, filter_logic)}" if tests else ""
            rows = conn.execute(
                f"SELECT {life.WORKER_COLUMNS} FROM agl_workers{where} ORDER BY rowid", params
            )
            workers = [worker_record(row) for row in rows]
        return paginate(workers, query)

    @retried
    def get_worker(self, worker_id: str) -> Record | None:
        with self._transaction() as conn:
            return life.worker(conn, worker_id)

    @retried
    def update_worker(self, worker_id: str, heartbeat_stats: Record | Unset) -> Record:
        with self._transaction() as conn:
            values: dict[str, Any] = {"last_heartbeat_time": self.clock()}
            if not isinstance(heartbeat_stats, Unset):
                values["heartbeat_stats"] = life.dump(dict(heartbeat_stats))
            life.upsert_worker(conn, worker_id, values)
            return life.worker(conn, worker_id) or {}

    # -- resources -------------------------------------------------------------------------

    @retried
    def add_resources(self, resources: Record) -> Record:
        with self._transaction() as conn:
            resources_id = new_resources_id()
            now = self.clock()
            conn.execute(
                f"INSERT INTO agl_resources ({_RESOURCE_COLUMNS}, touched) VALUES (?, ?, ?, ?, 1,"
                " (SELECT COALESCE(MAX(touched), 0) + 1 FROM agl_resources))",
                (resources_id, json.dumps(resources), now, now),
            )
            return _resources(conn, resources_id) or {}

    @retried
    def update_resources(self, resources_id: str, resources: Record) -> Record:
        with self._watched() as conn:
            now = self.clock()
            conn.execute(
                f"INSERT INTO agl_resources ({_RESOURCE_COLUMNS}, touched) VALUES (?, ?, ?, ?, 1,"
                " (SELECT COALESCE(MAX(touched), 0) + 1 FROM agl_resources))"
                " ON CONFLICT (resources_id) DO UPDATE SET resources = excluded.resources,"
                " update_time = excluded.update_time, version = agl_resources.version + 1,"
                " touched = excluded.touched",
                (resources_id, json.dumps(resources), now, now),
            )
            return _resources(conn, resources_id) or {}

    @retried
    def get_resources(self, resources_id: str) -> Record | None:
        with self._transaction() as conn:
            return _resources(conn, resources_id)

    @retried
    def get_latest_resources(self) -> Record | None:
        with self._transaction() as conn:
            latest = latest_resources_id(conn)
            return None if latest is None else _resources(conn, latest)

    @retried
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
        return paginate(items, query)


def _resources(conn: Conn, resources_id: str) -> Record | None:
    row = conn.execute(
        f"SELECT {_RESOURCE_COLUMNS} FROM agl_resources WHERE resources_id = ?",
        (resources_id,),
    ).fetchone()
    return None if row is None else resources_record(row)


def latest_resources_id(conn: Conn) -> str | None:
    """The resources added or updated last: those a rollout that names none runs with."""
    row = conn.execute(
        "SELECT resources_id FROM agl_resources ORDER BY touched DESC LIMIT 1"
    ).fetchone()
    return None if row is None else str(row[0])
