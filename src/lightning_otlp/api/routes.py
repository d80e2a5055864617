"""``/v1/agl``: agentlightning 0.3.0's LightningStore REST API, route for route.

The routes table below is the API's table of contents. Each handler parses, calls the backend
on the receiver's store thread (``run``), and encodes: the backend owns every rule.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router

from ..defaults import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_MAX_API_BATCH,
    DEFAULT_MAX_JSON_VALUES,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_WAIT,
)
from ..errors import BadRequest, Overloaded, PayloadTooLarge
from ..receiver.budget import MemoryBudget
from ..receiver.changes import Changes
from ..receiver.status import api_answer
from ..receiver.transport.http import (
    close_if_unread,
    headers_of,
    read_body,
)
from ..store.lightning import (
    ATTEMPT_STATUSES,
    MODES,
    ROLLOUT_STATUSES,
    UNSET,
    WORKER_STATUSES,
    LightningStoreBackend,
    Page,
    Record,
    ScanNeeded,
)
from . import wire
from .wire import Fields

# Deeper request bodies are refused (422): stored records are encoded again, within this depth.
MAX_JSON_DEPTH: Final = 100
_TOO_DEEP: Final = object()

PREFIX: Final = "/v1/agl"
# After a change wakes a wait, it looks again no sooner than this (a burst of commits is one look).
WAIT_SETTLE_SECONDS: Final = 0.1
# Threads that serve API reads on read connections of their own, beside the store thread; and
# reads queued for them at most before new ones get 503.
READ_THREADS: Final = 2
MAX_QUEUED_READS: Final = 64
_HELD: Final = "lightning_otlp.held"
# Backend calls that change nothing a wait looks for.
_READS: Final = frozenset(
    {
        "statistics",
        "query_rollouts",
        "get_rollout",
        "query_attempts",
        "get_latest_attempt",
        "query_workers",
        "get_worker",
        "query_resources",
        "get_resources",
        "get_latest_resources",
        "query_spans",
        "finished_rollouts",
    }
)


@dataclass(frozen=True, slots=True)
class APILimits:
    """What one API request may cost; the OTLP path's size, time and memory limits included."""

    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    max_json_values: int = DEFAULT_MAX_JSON_VALUES
    max_batch: int = DEFAULT_MAX_API_BATCH
    max_wait: float = DEFAULT_MAX_WAIT
    # Seconds between a wait's looks when nothing changes (rollout timeouts need no write).
    wait_recheck: float = 10.0


T = TypeVar("T")
Runner = Callable[..., Awaitable[Any]]
Handler = Callable[[Request], Awaitable[Response]]


def json_response(value: Any, status: int = 200) -> Response:
    return Response(_dumps(value), status, media_type="application/json")


def _dumps(value: Any) -> bytes:
    # orjson: a page of 500 spans encodes in a tenth of the stdlib's time. It refuses what
    # JSON cannot say exactly (integers past 64 bits); the stdlib writes those. Bytes are
    # records the store already encoded (``encoded`` pages), sent as they are.
    try:
        return orjson.dumps(value, default=_fragment, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return json.dumps(value, default=json.loads, separators=(",", ":")).encode()


def _fragment(value: Any) -> orjson.Fragment:
    if isinstance(value, bytes):
        return orjson.Fragment(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


class LightningAPI:
    """The ``/v1/agl`` routes over one backend.

    Args:
        backend: the store's LightningStore API.
        run: runs a backend call where store writes are serialized (the receiver's store
            thread); ``run(fn, *args)`` returns ``fn(*args)``.
        limits: body size, time, JSON work, batch and wait limits.
        budget: the request memory budget, shared with OTLP.
        changes: woken after every commit, so waits look again only when something changed.
    """

    def __init__(
        self,
        backend: LightningStoreBackend,
        run: Runner,
        *,
        limits: APILimits | None = None,
        budget: MemoryBudget | None = None,
        changes: Changes | None = None,
    ) -> None:
        self.backend = backend
        self._run = run
        self.limits = limits or APILimits()
        self.budget = budget or MemoryBudget()
        self.changes = changes or Changes()
        # JSON is parsed here, never on the event loop; one thread: bodies parse one at a time.
        self._parser = ThreadPoolExecutor(1, thread_name_prefix="lightning-otlp-api-json")
        # Reads run here when the store allows, so a long read never holds up OTLP commits.
        self._readers: ThreadPoolExecutor | None = None
        if backend.reads_apart():
            self._readers = ThreadPoolExecutor(
                READ_THREADS, thread_name_prefix="lightning-otlp-api-read"
            )
        self._queued_reads = 0
        self.router = Router(routes=self.routes())

    def routes(self) -> list[Route]:
        b = self.backend
        return [
            Route("/health", self.health, methods=["GET"]),
            Route("/queues/rollouts/enqueue", self.enqueue, methods=["POST"]),
            Route("/queues/rollouts/dequeue", self.dequeue, methods=["POST"]),
            Route("/rollouts", self.start_rollout, methods=["POST"]),
            Route("/rollouts", self.query_rollouts, methods=["GET"]),
            Route("/rollouts/search", self.search_rollouts, methods=["POST"]),
            Route(
                "/rollouts/{rollout_id}",
                self.path_call(b.get_rollout, "rollout_id"),
                methods=["GET"],
            ),
            Route("/rollouts/{rollout_id}", self.update_rollout, methods=["POST"]),
            Route("/rollouts/{rollout_id}/attempts", self.start_attempt, methods=["POST"]),
            Route("/rollouts/{rollout_id}/attempts/search", self.search_attempts, methods=["POST"]),
            Route(
                "/rollouts/{rollout_id}/attempts/{attempt_id}",
                self.update_attempt,
                methods=["POST"],
            ),
            Route("/workers", self.query_workers, methods=["GET"]),
            Route("/workers/search", self.search_workers, methods=["POST"]),
            Route(
                "/workers/{worker_id}", self.path_call(b.get_worker, "worker_id"), methods=["GET"]
            ),
            Route("/workers/{worker_id}", self.update_worker, methods=["POST"]),
            Route("/statistics", self.statistics, methods=["GET"]),
            Route("/rollouts/{rollout_id}/attempts", self.query_attempts, methods=["GET"]),
            Route(
                "/rollouts/{rollout_id}/attempts/latest",
                self.path_call(b.get_latest_attempt, "rollout_id"),
                methods=["GET"],
            ),
            Route("/resources", self.query_resources, methods=["GET"]),
            Route("/resources", self.add_resources, methods=["POST"]),
            Route("/resources/latest", self.latest_resources, methods=["GET"]),
            Route("/resources/{resources_id}", self.update_resources, methods=["POST"]),
            Route(
                "/resources/{resources_id}",
                self.path_call(b.get_resources, "resources_id"),
                methods=["GET"],
            ),
            Route("/spans", self.add_span, methods=["POST"]),
            Route("/spans", self.query_spans, methods=["GET"]),
            Route("/spans/search", self.search_spans, methods=["POST"]),
            Route("/spans/next", self.next_sequence_id, methods=["POST"]),
            Route("/waits/rollouts", self.wait_for_rollouts, methods=["POST"]),
        ]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Serve a request whose path starts with ``/v1/agl``."""
        scope = dict(scope)
        scope["root_path"] = scope.get("root_path", "") + PREFIX
        scope["path"] = scope["path"][len(PREFIX) :] or "/"
        held = [0]  # request memory budget this request's body holds, released when answered
        scope[_HELD] = held
        receive, send = close_if_unread(scope, receive, send)
        try:
            await self.router(scope, receive, send)
        finally:
            self.budget.release(held[0])

    def close(self) -> None:
        self._parser.shutdown(wait=False, cancel_futures=True)
        if self._readers is not None:
            self._readers.shutdown(wait=True, cancel_futures=True)
            self.backend.close_readers()

    async def read_json(self, request: Request) -> Any:
        """The body as JSON, read within the OTLP path's limits and parsed off the event loop;
        its values are counted as it arrives, so a bomb is refused before the rest is read."""
        limits = self.limits
        counted = [0]

        def count(chunk: bytes) -> None:
            counted[0] += _count_values(chunk, limits.max_json_values)
            if counted[0] > limits.max_json_values:
                raise _too_many_values(limits.max_json_values)

        body = await read_body(
            headers_of(request.scope),
            request.receive,
            request.scope[_HELD],
            limit=limits.max_request_bytes,
            budget=self.budget,
            timeout=limits.body_timeout,
            each=count,
        )
        if not body or body.isspace():
            return None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._parser, parse_json, body, limits.max_json_values)

    def _batch(self, count: int, what: str) -> None:
        """Refuse (400, not retryable) a request for more than the batch limit at once."""
        if count > self.limits.max_batch:
            raise BadRequest(
                f"{count} {what} in one request; at most {self.limits.max_batch} are taken"
                " (split the request)"
            )

    # -- plumbing ------------------------------------------------------------------------

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        name = getattr(fn, "__name__", "")
        if self._readers is not None and name in _READS:
            return await self._read(fn, args, kwargs)
        try:
            if kwargs:
                return await self._run(lambda: fn(*args, **kwargs))  # type: ignore[no-any-return]
            return await self._run(fn, *args)  # type: ignore[no-any-return]
        finally:
            if getattr(fn, "__name__", "") not in _READS:
                self.changes.notify()

    async def _read(self, fn: Callable[..., T], args: Any, kwargs: Any) -> T:
        """A read on a read thread; the watchdog scan, when due, first on the store thread, so
        the read sees what it changed (upstream scans before every query)."""
        assert self._readers is not None
        if self._queued_reads >= MAX_QUEUED_READS:
            raise Overloaded(f"{self._queued_reads} reads already queued; retry later")
        self._queued_reads += 1
        try:
            if self.backend.scan_due():
                await self._run(self.backend.watch)
            loop = asyncio.get_running_loop()
            try:
                return await loop.run_in_executor(self._readers, self._reading, fn, args, kwargs)
            except ScanNeeded:
                # An attempt it reads about is past a deadline: the store thread marks it first.
                return await self._run(lambda: fn(*args, **kwargs))  # type: ignore[no-any-return]
        finally:
            self._queued_reads -= 1

    def _reading(self, fn: Callable[..., T], args: Any, kwargs: Any) -> T:
        with self.backend.reading():
            return fn(*args, **kwargs)

    def path_call(self, fn: Callable[[str], Any], param: str) -> Handler:
        """A GET that passes one path parameter and answers the record or ``null``."""

        async def handler(request: Request) -> Response:
            return await guarded(lambda: self._path_call(fn, request.path_params[param]))

        return handler

    async def _path_call(self, fn: Callable[[str], Any], value: str) -> Response:
        return json_response(await self.call(fn, value))

    # -- handlers ------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def statistics(self, request: Request) -> Response:
        return await guarded(lambda: self._answer(self.backend.statistics))

    async def _answer(self, fn: Callable[[], Any], status: int = 200) -> Response:
        return json_response(await self.call(fn), status)

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

    async def add_span(self, request: Request) -> Response:
        async def go() -> Response:
            body = wire.body_object(await self.read_json(request), required=True) or {}
            return json_response(await self.call(self.backend.add_span, wire.span(body)), 201)

        return await guarded(go)

    async def query_spans(self, request: Request) -> Response:
        return await guarded(lambda: self._spans(query_fields(request)))

    async def search_spans(self, request: Request) -> Response:
        async def go() -> Response:
            body = wire.body_object(await self.read_json(request), required=True) or {}
            return await self._spans(Fields(body, "body"))

        return await guarded(go)

    async def _spans(self, fields: Fields) -> Response:
        rollout_id = fields.string("rollout_id", required=True)
        attempt_id = fields.string("attempt_id")
        filters = {
            name: {"exact": fields.string(name), "contains": fields.string(name + "_contains")}
            for name in wire.SPAN_FILTERS
        }
        logic = wire.filter_logic(fields)
        query = wire.query(fields, wire.SPAN_FIELDS, "sequence_id")
        page = await self.call(
            self.backend.query_spans,
            rollout_id,
            attempt_id,
            filters=filters,
            filter_logic=logic,
            query=query,
            encoded=True,
        )
        return await large_page_response(page)

    async def next_sequence_id(self, request: Request) -> Response:
        async def go() -> Response:
            body = wire.body_object(await self.read_json(request), required=True) or {}
            f = Fields(body, "body")
            rollout_id = f.string("rollout_id", required=True)
            attempt_id = f.string("attempt_id", required=True)
            value = await self.call(self.backend.next_span_sequence_id, rollout_id, attempt_id)
            return json_response({"sequence_id": value})

        return await guarded(go)

    async def wait_for_rollouts(self, request: Request) -> Response:
        async def go() -> Response:
            body = wire.body_object(await self.read_json(request), required=True) or {}
            f = Fields(body, "body")
            rollout_ids = f.strings("rollout_ids")
            if rollout_ids is None:
                raise wire.error("missing", ["body", "rollout_ids"], "Field required", None)
            self._batch(len(rollout_ids), "ids in rollout_ids")
            timeout = _wait_seconds(f.number("timeout"), self.limits.max_wait)
            return json_response(await self._wait(request, rollout_ids, timeout))

        return await guarded(go)

    async def _wait(self, request: Request, rollout_ids: list[str], timeout: float) -> Any:
        """Look, then sleep until a commit (or, for rollout timeouts, ``wait_recheck``) and look
        again, until all are finished or ``timeout`` passes; a client that leaves ends it."""
        deadline = time.monotonic() + timeout
        wanted = len(set(rollout_ids))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            while True:
                done = await self.call(self.backend.finished_rollouts, rollout_ids)
                left = deadline - time.monotonic()
                if len(done) == wanted or left <= 0:
                    return done
                changed = asyncio.ensure_future(
                    self.changes.wait(min(left, self.limits.wait_recheck))
                )
                await asyncio.wait({changed, gone}, return_when=asyncio.FIRST_COMPLETED)
                if gone.done():
                    changed.cancel()
                    return done  # nobody reads it; the connection is gone
                await asyncio.sleep(min(WAIT_SETTLE_SECONDS, max(0.0, deadline - time.monotonic())))
        finally:
            gone.cancel()


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone (the body was read: the next message is the end)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _wait_seconds(timeout: float | None, longest: float) -> float:
    """A wait's timeout within ``[0, longest]``: none, NaN or more than ``longest`` wait
    ``longest`` (upstream's client asks again), a negative one looks once."""
    if timeout is None or timeout != timeout or timeout > longest:
        return longest
    return max(0.0, timeout)


def page_response(page: Page) -> Response:
    return json_response(page.as_dict())


async def large_page_response(page: Page) -> Response:
    """A page that may hold a whole rollout's spans, encoded off the event loop a slice at a
    time: one orjson call holds the interpreter lock until it ends, so a page of 100,000
    spans in one call would stall every other request (health answers included) for it."""
    if len(page.items) <= PAGE_SLICE:
        return page_response(page)
    body = await asyncio.to_thread(_page_body, page)
    return Response(body, 200, media_type="application/json")


def _page_body(page: Page) -> bytes:
    slices = [
        _dumps(page.items[start : start + PAGE_SLICE])[1:-1]
        for start in range(0, len(page.items), PAGE_SLICE)
    ]
    rest = _dumps({"limit": page.limit, "offset": page.offset, "total": page.total})
    return b'{"items":[' + b",".join(slices) + b"]," + rest[1:]


# Records per orjson call when a large page is encoded.
PAGE_SLICE: Final = 500


def query_fields(request: Request, lists: set[str] | None = None) -> Fields:
    """The query as ``Fields``; names in ``lists`` may repeat (``?a=1&a=2``)."""
    data: Record = {}
    for key, value in request.query_params.multi_items():
        if lists and key in lists:
            data.setdefault(key, []).append(value)
        else:
            data[key] = value
    return Fields(data, "query")


def parse_json(body: bytes, max_values: int) -> Any:
    """Parse a request body with a bounded amount of work: more than ``max_values`` values (an
    upper bound counted in C before parsing) is refused 413, nesting past ``MAX_JSON_DEPTH``
    422. The stdlib parses, as in upstream's server (orjson would read integers past 64 bits as
    floats), so both take and refuse the same bodies."""
    if _count_values(body, max_values) > max_values:
        raise _too_many_values(max_values)
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise wire.error("json_invalid", ["body", 0], f"JSON decode error: {exc}", {}) from None
    except RecursionError:
        document = _TOO_DEEP
    if document is _TOO_DEEP or _deeper_than(document, MAX_JSON_DEPTH):
        # Records are stored and answered as JSON again: nesting this deep cannot round-trip.
        raise wire.error(
            "json_invalid",
            ["body", 0],
            f"JSON decode error: nested deeper than {MAX_JSON_DEPTH} levels",
            {},
        )
    return document


def _count_values(body: bytes, max_values: int) -> int:
    """``[``, ``{`` and ``,`` in the body, counted a slice at a time and only until past
    ``max_values``: one count over a 20 MiB body holds the interpreter lock for tens of
    milliseconds, and a bomb is refused after reading as much as the limit allows."""
    values = 0
    for start in range(0, len(body), COUNT_SLICE):
        end = start + COUNT_SLICE
        values += body.count(b"[", start, end) + body.count(b"{", start, end)
        values += body.count(b",", start, end)
        if values > max_values:
            break
    return values


def _too_many_values(max_values: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the JSON body holds more than {max_values} values; at most {max_values} are parsed"
    )


# Bytes of a JSON body counted per call (``_count_values``).
COUNT_SLICE: Final = 256 * 1024


def _deeper_than(document: Any, limit: int) -> bool:
    """Whether ``document`` nests lists and objects more than ``limit`` deep (no recursion)."""
    stack: list[tuple[Any, int]] = [(document, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, (dict, list)))
    return False


async def guarded(handler: Callable[[], Awaitable[Response]]) -> Response:
    """The handler's answer, or its error's as the one error map decides (``api_answer``)."""
    try:
        return await handler()
    except Exception as exc:
        result = api_answer(exc)
        response = json_response(result.body, result.http_status)
        for name, value in result.http_headers:
            response.headers[name.decode()] = value.decode()
        return response
