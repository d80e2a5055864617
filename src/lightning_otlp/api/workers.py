"""The workers, resources, statistics and health routes."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..errors import BadRequest
from ..store.lightning import UNSET, WORKER_STATUSES
from . import wire
from .bodies import guarded, json_response, page_response, query_fields
from .calls import APICalls
from .wire import Fields


class WorkerRoutes(APICalls):
    """Workers and their heartbeats, resources and their versions, statistics, health."""

    async def health(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def statistics(self, request: Request) -> Response:
        return await guarded(lambda: self._answer(self.backend.statistics))

    async def query_workers(self, request: Request) -> Response:
        return await guarded(lambda: self._workers(query_fields(request, {"status_in"})))

    async def search_workers(self, request: Request) -> Response:
        async def go() -> Response:
            body = wire.body_object(await self.read_json(request), required=True) or {}
            return await self._workers(Fields(body, "body"))

        return await guarded(go)

    async def _workers(self, fields: Fields) -> Response:
        query = wire.query(fields, wire.WORKER_FIELDS)
        page = await self.call(
            self.backend.query_workers,
            status_in=fields.choices("status_in", WORKER_STATUSES),
            worker_id_contains=fields.string("worker_id_contains"),
            filter_logic=wire.filter_logic(fields),
            query=query,
        )
        return page_response(page)

    async def update_worker(self, request: Request) -> Response:
        async def go() -> Response:
            body = wire.body_object(await self.read_json(request), required=False)
            stats: Any = UNSET
            if body is not None and "heartbeat_stats" in body:
                stats = Fields(body, "body").mapping("heartbeat_stats")
                if stats is None:
                    raise BadRequest("heartbeat_stats is invalid; it cannot be a null value.")
            worker_id = request.path_params["worker_id"]
            return json_response(await self.call(self.backend.update_worker, worker_id, stats))

        return await guarded(go)

    async def query_resources(self, request: Request) -> Response:
        async def go() -> Response:
            fields = query_fields(request)
            query = wire.query(fields, wire.RESOURCES_FIELDS)
            page = await self.call(
                self.backend.query_resources,
                resources_id=fields.string("resources_id"),
                resources_id_contains=fields.string("resources_id_contains"),
                query=query,
            )
            return page_response(page)

        return await guarded(go)

    async def add_resources(self, request: Request) -> Response:
        async def go() -> Response:
            resources = wire.body_object(await self.read_json(request), required=True)
            return json_response(await self.call(self.backend.add_resources, resources), 201)

        return await guarded(go)

    async def latest_resources(self, request: Request) -> Response:
        return await guarded(lambda: self._answer(self.backend.get_latest_resources))

    async def update_resources(self, request: Request) -> Response:
        async def go() -> Response:
            resources = wire.body_object(await self.read_json(request), required=True)
            resources_id = request.path_params["resources_id"]
            return json_response(
                await self.call(self.backend.update_resources, resources_id, resources)
            )

        return await guarded(go)
