"""The queue, rollouts and attempts routes."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..errors import BadRequest
from ..store.lightning import ATTEMPT_STATUSES, MODES, ROLLOUT_STATUSES, Record
from . import wire
from .bodies import guarded, json_response, page_response, query_fields
from .calls import APICalls
from .wire import Fields


class RolloutRoutes(APICalls):
    """Enqueue and dequeue; start, query, search and update rollouts and their attempts."""

    async def enqueue(self, request: Request) -> Response:
        async def go() -> Response:
            body = wire.body_object(await self.read_json(request), required=True) or {}
            items = body.get("rollouts")
            if "rollouts" not in body:
                raise wire.error("missing", ["body", "rollouts"], "Field required", None)
            if not isinstance(items, list):
                raise wire.error(
                    "list_type", ["body", "rollouts"], "Input should be a valid list", items
                )
            self._batch(len(items), "rollouts")
            requests = []
            for i, item in enumerate(items):
                if not isinstance(item, dict):
                    raise wire.error(
                        "model_attributes_type",
                        ["body", "rollouts", i],
                        "Input should be a valid dictionary or object to extract fields from",
                        item,
                    )
                requests.append(wire.rollout_request(item, ("body", "rollouts", i)))
            if not requests:
                return json_response([], 201)
            return json_response(await self.call(self.backend.enqueue_rollouts, requests), 201)

        return await guarded(go)

    async def dequeue(self, request: Request) -> Response:
        async def go() -> Response:
            body = wire.body_object(await self.read_json(request), required=False) or {}
            fields = Fields(body, "body")
            limit = fields.integer("limit", 1)
            worker_id = fields.string("worker_id")
            if limit <= 0:
                return json_response([])
            self._batch(limit, "rollouts (limit)")
            return json_response(await self.call(self.backend.dequeue_rollouts, limit, worker_id))

        return await guarded(go)

    async def start_rollout(self, request: Request) -> Response:
        async def go() -> Response:
            body = wire.body_object(await self.read_json(request), required=True) or {}
            r = wire.rollout_request(body)
            rollout = await self.call(
                self.backend.start_rollout,
                r["input"],
                r["mode"],
                r["resources_id"],
                r["config"],
                r["metadata"],
                r["worker_id"],
            )
            return json_response(rollout, 201)

        return await guarded(go)

    async def query_rollouts(self, request: Request) -> Response:
        return await guarded(
            lambda: self._rollouts(query_fields(request, {"status_in", "rollout_id_in"}), False)
        )

    async def search_rollouts(self, request: Request) -> Response:
        async def go() -> Response:
            body = wire.body_object(await self.read_json(request), required=True) or {}
            return await self._rollouts(Fields(body, "body"), True)

        return await guarded(go)

    async def _rollouts(self, fields: Fields, search: bool) -> Response:
        query = wire.query(fields, wire.ROLLOUT_FIELDS)
        status_in = fields.choices("status_in", ROLLOUT_STATUSES)
        rollout_id_in = fields.strings("rollout_id_in")
        if rollout_id_in is not None:
            self._batch(len(rollout_id_in), "ids in rollout_id_in")
        page = await self.call(
            self.backend.query_rollouts,
            status_in=status_in,
            rollout_id_in=rollout_id_in,
            rollout_id_contains=fields.string("rollout_id_contains"),
            filter_logic=wire.filter_logic(fields),
            query=query,
        )
        return page_response(page)

    async def update_rollout(self, request: Request) -> Response:
        async def go() -> Response:
            rollout_id = request.path_params["rollout_id"]
            body = wire.body_object(await self.read_json(request), required=True) or {}
            f = Fields(body, "body")
            changes: Record = {}
            if f.has("input"):
                changes["input"] = body["input"]
            if f.has("mode"):
                changes["mode"] = f.choice("mode", MODES)
            if f.has("resources_id"):
                changes["resources_id"] = f.string("resources_id")
            if f.has("status"):
                changes["status"] = f.choice("status", ROLLOUT_STATUSES)
            if f.has("config"):
                changes["config"] = wire.rollout_config(body["config"], ["body", "config"])
            if f.has("metadata"):
                changes["metadata"] = f.mapping("metadata")
            for name in ("status", "config"):
                if name in changes and changes[name] is None:
                    raise BadRequest(f"{name} is invalid; it cannot be a null value.")
            return json_response(await self.call(self.backend.update_rollout, rollout_id, changes))

        return await guarded(go)

    async def start_attempt(self, request: Request) -> Response:
        async def go() -> Response:
            body = wire.body_object(await self.read_json(request), required=False) or {}
            worker_id = Fields(body, "body").string("worker_id")
            rollout_id = request.path_params["rollout_id"]
            return json_response(
                await self.call(self.backend.start_attempt, rollout_id, worker_id), 201
            )

        return await guarded(go)

    async def query_attempts(self, request: Request) -> Response:
        async def go() -> Response:
            query = wire.query(query_fields(request), wire.ATTEMPT_FIELDS, "sequence_id")
            rollout_id = request.path_params["rollout_id"]
            return page_response(await self.call(self.backend.query_attempts, rollout_id, query))

        return await guarded(go)

    async def search_attempts(self, request: Request) -> Response:
        async def go() -> Response:
            body = wire.body_object(await self.read_json(request), required=True) or {}
            query = wire.query(Fields(body, "body"), wire.ATTEMPT_FIELDS, "sequence_id")
            rollout_id = request.path_params["rollout_id"]
            return page_response(await self.call(self.backend.query_attempts, rollout_id, query))

        return await guarded(go)

    async def update_attempt(self, request: Request) -> Response:
        async def go() -> Response:
            body = wire.body_object(await self.read_json(request), required=True) or {}
            f = Fields(body, "body")
            changes: Record = {}
            if f.has("status"):
                changes["status"] = f.choice("status", ATTEMPT_STATUSES)
            if f.has("worker_id"):
                changes["worker_id"] = f.string("worker_id")
            if f.has("last_heartbeat_time"):
                changes["last_heartbeat_time"] = f.number("last_heartbeat_time")
            if f.has("metadata"):
                changes["metadata"] = f.mapping("metadata")
            for name, value in changes.items():
                if value is None:
                    raise BadRequest(f"{name} is invalid; it cannot be a null value.")
            params = request.path_params
            attempt = await self.call(
                self.backend.update_attempt, params["rollout_id"], params["attempt_id"], changes
            )
            return json_response(attempt)

        return await guarded(go)
