"""Where the API's backend calls run: writes on the receiver's API write thread, reads on read
threads of their own when the store allows, bodies read within the OTLP path's limits."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from ..defaults import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_MAX_API_BATCH,
    DEFAULT_MAX_JSON_VALUES,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_WAIT,
)
from ..errors import BadRequest, Overloaded
from ..receiver.budget import MemoryBudget
from ..receiver.changes import Changes
from ..receiver.transport.http import headers_of, read_body
from ..store.lightning import LightningStoreBackend, ScanNeeded
from .bodies import count_values, guarded, json_response, parse_json, too_many_values

# Threads that serve API reads on read connections of their own, beside the writers; and
# reads queued for them at most before new ones get 503.
READ_THREADS: Final = 2
MAX_QUEUED_READS: Final = 64
# The scope key of the request memory budget a request's body holds, released when answered.
HELD: Final = "lightning_otlp.held"
# Bodies up to this size parse on the event loop, in microseconds: less than a turn of the parse
# thread costs, and never queued behind a large body another client sent.
INLINE_JSON_BYTES: Final = 16 * 1024
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
        "span_order",
        "spans_at",
        "finished_rollouts",
    }
)

# Backend writes that finish no rollout but by the watchdog's scan, whose timeouts reach a wait
# at its recheck (``APILimits.wait_recheck``), as those of the scan between requests do.
_FINISH_NONE: Final = frozenset(
    {
        "enqueue_rollouts",
        "dequeue_rollouts",
        "start_rollout",
        "next_span_sequence_id",
        "update_worker",
        "add_resources",
        "update_resources",
    }
)


def _rollouts_named(name: str, args: tuple[Any, ...]) -> set[str] | None:
    """The rollout a write may finish, for the waits to wake: the one it names (a span's, or
    its first argument); None, every rollout, for a write not known here."""
    if name == "add_span":
        return {args[0]["rollout_id"]}
    if name in ("update_attempt", "update_rollout", "start_attempt"):
        return {args[0]}
    return None


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


class APICalls:
    """The backend calls and body reads every group of routes makes.

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

    def close(self) -> None:
        self._parser.shutdown(wait=False, cancel_futures=True)
        if self._readers is not None:
            self._readers.shutdown(wait=True, cancel_futures=True)
            self.backend.close_readers()

    async def read_json(self, request: Request) -> Any:
        """The body as JSON, read within the OTLP path's limits and, unless small, parsed off
        the event loop; its values are counted as it arrives, so a bomb is refused before the
        rest is read."""
        limits = self.limits
        counted = [0]

        def count(chunk: bytes) -> None:
            counted[0] += count_values(chunk, limits.max_json_values)
            if counted[0] > limits.max_json_values:
                raise too_many_values(limits.max_json_values)

        body = await read_body(
            headers_of(request.scope),
            request.receive,
            request.scope[HELD],
            limit=limits.max_request_bytes,
            budget=self.budget,
            timeout=limits.body_timeout,
            each=count,
        )
        if not body or body.isspace():
            return None
        if len(body) <= INLINE_JSON_BYTES:
            return parse_json(body, limits.max_json_values)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._parser, parse_json, body, limits.max_json_values)

    def _batch(self, count: int, what: str) -> None:
        """Refuse (400, not retryable) a request for more than the batch limit at once."""
        if count > self.limits.max_batch:
            raise BadRequest(
                f"{count} {what} in one request; at most {self.limits.max_batch} are taken"
                " (split the request)"
            )

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        name = getattr(fn, "__name__", "")
        if self._readers is not None and name in _READS:
            return await self._read(fn, args, kwargs)
        try:
            if kwargs:
                return await self._run(lambda: fn(*args, **kwargs))  # type: ignore[no-any-return]
            return await self._run(fn, *args)  # type: ignore[no-any-return]
        finally:
            if name not in _READS and name not in _FINISH_NONE:
                self.changes.notify(_rollouts_named(name, args))

    async def _read(self, fn: Callable[..., T], args: Any, kwargs: Any) -> T:
        """A read on a read thread; the watchdog scan, when due, first on the write thread, so
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
                # An attempt it reads about is past a deadline: the write thread marks it first.
                return await self._run(lambda: fn(*args, **kwargs))  # type: ignore[no-any-return]
        finally:
            self._queued_reads -= 1

    async def read_more(self, fn: Callable[..., T], *args: Any) -> T:
        """A further read for a request already taken (the next slice of an answer being
        sent): on a read thread where the store has them, never refused for the reads queued."""
        if self._readers is None:
            return await self._run(fn, *args)  # type: ignore[no-any-return]
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._reading, fn, args, {})

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

    async def _answer(self, fn: Callable[[], Any], status: int = 200) -> Response:
        return json_response(await self.call(fn), status)
