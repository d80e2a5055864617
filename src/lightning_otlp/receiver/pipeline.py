"""The one export path both transports share: decompress, decode, route, store, answer."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Final, Literal, NamedTuple, TypeVar

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest as PB2ExportLogsServiceRequest,
)
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceResponse as PB2ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest as PB2ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceResponse as PB2ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceResponse as PB2ExportTraceServiceResponse,
)

from ..batch import SpanBatch
from ..defaults import DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_REQUEST_MEMORY
from ..errors import Overloaded, ReceiverError, StoreUnavailable
from ..store.base import Served
from ..store.logs import log_rows
from .budget import MemoryBudget
from .changes import Changes
from .decode import COUNTED_FROM_BYTES, decode, decode_traces, decompress
from .metrics import Counters, Histogram
from .route import RoutingConfig, route

log = logging.getLogger("lightning_otlp")

# After a failed commit, readiness stays false this long unless a commit succeeds first.
NOT_READY_AFTER_FAILURE_SECONDS: Final = 5.0
# The store's background work takes the store thread only after this long without a request,
# one short step at a time, and looks again this often once it has caught up.
IDLE_AFTER_SECONDS: Final = 0.1
IDLE_POLL_SECONDS: Final = 1.0
# Under sustained ingest there is no such pause, so a step also runs whenever no batch waits
# for the store thread and at most this many requests are in flight (fewer than a full load
# keeps queued); the batches that arrive meanwhile commit right after it. Once caught up, it
# looks again this often, so records of spans that just arrived are ready within about this.
BUSY_STEP_MAX_IN_FLIGHT: Final = 1
BUSY_POLL_SECONDS: Final = 0.05
# A group commit takes at most this many waiting requests, or spans (a bound on how long one
# transaction holds the store).
MAX_GROUP_REQUESTS: Final = 32
# Request bodies (as received) from this size decode on the large lane: those whose spans are
# counted before they are decoded; the OTel SDKs' usual 512-span batches are smaller.
LARGE_BODY_BYTES: Final = COUNTED_FROM_BYTES
MAX_GROUP_SPANS: Final = 16_384
_NOT_STORED: Final = "lightning-otlp stores traces only; {} were not stored"
_LOGS_NOT_STORED: Final = (
    "{} log record(s) not stored: lightning-otlp keeps only GenAI events (gen_ai.*) that name"
    " the span they belong to"
)

T = TypeVar("T")
# The OTLP signals; each has one export entry that both transports call.
Signal = Literal["traces", "metrics", "logs"]
SIGNALS: Final[tuple[Signal, ...]] = ("traces", "metrics", "logs")
Transport = Literal["grpc", "http"]
# Who queues work: OTLP exports, or LightningStore API calls. Each kind has its own
# ``max_in_flight``, so API calls (long waits among them) never make an OTLP export wait or fail.
Kind = Literal["otlp", "api"]
# The thread a call runs on: commits, decoding and routing, LightningStore API writes.
Stage = Literal["store", "decode", "api"]


class _Queued(NamedTuple):
    """A decoded batch waiting for the store thread, and where its answer goes."""

    batch: SpanBatch
    transport: str
    done: Future[PB2ExportTraceServiceResponse]


class Pipeline:
    """Runs trace commits on a single store thread, so batches waiting for it share one
    transaction; log records and reads reach the store from other threads, so it locks itself.

    Args:
        store: an opened store.
        routing: how spans without explicit ids find their rollout.
        max_request_bytes: limit on a request after decompression.
        max_in_flight: requests queued for the store before new ones get "unavailable".
    """

    def __init__(
        self,
        store: Served,
        routing: RoutingConfig | None = None,
        *,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_request_memory: int = DEFAULT_MAX_REQUEST_MEMORY,
    ) -> None:
        if max_request_bytes <= 0:
            raise ValueError("max_request_bytes must be positive")
        if max_in_flight <= 0:
            raise ValueError("max_in_flight must be positive")
        self.store = store
        self.routing = routing or RoutingConfig()
        self.max_request_bytes = max_request_bytes
        self.max_in_flight = max_in_flight
        self.counters = Counters()
        # Request bytes in memory (bodies, decompressed bodies), shared with the transports.
        self.budget = MemoryBudget(max_request_memory)
        # Per request, never per span: latency from receipt to answer, and store commit time.
        self.request_seconds = {"grpc": Histogram(), "http": Histogram()}
        self.commit_seconds = Histogram()
        self.draining = False
        # Woken after a trace commit that reported outcomes: what LightningStore API waits
        # sleep on (API writes wake it too).
        self.changes = Changes()
        self._store_failed_at: float | None = None
        self._in_flight = 0  # of every kind
        self._in_flight_of: dict[Kind, int] = {"otlp": 0, "api": 0}
        # Batches decoded and waiting for the store thread (``_commit_queued``).
        self._commits: deque[_Queued] = deque()
        self._last_request = time.monotonic()
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="lightning-otlp-store")
        # Decompression, decoding and routing run here, so one costly request never holds up
        # the commits of the others (the store thread only commits).
        self._decoder = ThreadPoolExecutor(1, thread_name_prefix="lightning-otlp-decode")
        # Bodies of ``LARGE_BODY_BYTES`` or more decode on a lane of their own: a large body can
        # take tens of milliseconds before it is refused (a flood of tiny spans is counted span
        # by span), and exporters' usual batches must not queue behind it.
        self._large_decoder = ThreadPoolExecutor(
            1, thread_name_prefix="lightning-otlp-decode-large"
        )
        # LightningStore API writes, in arrival order, beside the store thread's commits
        # (``stage="api"``): they never queue behind ingest or idle work (on SQLite they take
        # the one connection before the commits waiting for it, ``store.db.WriterLock``).
        self._api = ThreadPoolExecutor(1, thread_name_prefix="lightning-otlp-api-write")
        self._counters_lock = threading.Lock()
        self._exporters: dict[Signal, Callable[..., Message]] = {
            "traces": self.export_traces,
            "metrics": self.export_metrics,
            "logs": self.export_logs,
        }

    # -- synchronous stages (run on the store thread) ------------------------------------

    def export_traces(
        self, body: bytes, encoding: str | None, media: str, transport: str = "grpc"
    ) -> PB2ExportTraceServiceResponse:
        """Commit a trace export request; return its response only once it is durable.

        Both stages on the calling thread (tests and tools); ``export`` runs them apart.
        """
        batch, charged = self.decode_traces(body, encoding, media, transport)
        try:
            return self.commit_traces(batch, transport)
        finally:
            self.budget.release(charged)

    def decode_traces(
        self, body: bytes, encoding: str | None, media: str, transport: str = "grpc"
    ) -> tuple[SpanBatch, int]:
        """Decompress, decode and route; returns the batch and the budget bytes it holds (the
        decompressed body's), which the caller releases once the batch is committed."""
        charged = 0
        try:
            data = decompress(body, encoding, self.max_request_bytes)
            if data is not body:
                charged = len(data)
                if not self.budget.reserve(charged):
                    charged = 0
                    raise Overloaded(
                        f"{len(data)} decompressed bytes do not fit the request memory budget"
                        " now; retry later"
                    )
            return route(decode_traces(data, media), self.routing, data, media), charged
        except ReceiverError:
            self.budget.release(charged)
            self._count(self.counters.failed_requests, transport, 1)
            raise

    def commit_traces(
        self, batch: SpanBatch, transport: str = "grpc"
    ) -> PB2ExportTraceServiceResponse:
        """Commit a routed batch (on the store thread) and answer for it."""
        self._write([batch], transport)
        return self._answer(batch, transport)

    def _commit_queued(self) -> None:
        """Commit the batches waiting in ``_commits`` (this job's and any queued behind it) in
        one transaction, so requests that arrive while a commit syncs to disk share the next
        sync instead of waiting for one each. Every request queues one such job and its batch
        first, so a job finds its batch committed by an earlier job or takes it itself."""
        group: list[_Queued] = []
        spans = 0
        commits = self._commits
        while commits and len(group) < MAX_GROUP_REQUESTS and spans < MAX_GROUP_SPANS:
            entry = commits.popleft()
            group.append(entry)
            spans += entry.batch.accepted
        if not group:
            return
        try:
            self._commit_group(group)
        finally:
            for _, _, done in group:  # whatever happened, no request waits for ever
                if not done.done():
                    done.set_exception(RuntimeError("the commit ended without an answer"))

    def _commit_group(self, group: list[_Queued]) -> None:
        try:
            self._write([batch for batch, _, _ in group], group[0].transport)
        except Exception as exc:
            if len(group) == 1:
                group[0].done.set_exception(exc)
                return
            for batch, transport, done in group:  # one at a time: the failure is that one's
                try:
                    done.set_result(self.commit_traces(batch, transport))
                except Exception as single:
                    done.set_exception(single)
            return
        for batch, transport, done in group:
            done.set_result(self._answer(batch, transport))

    def _write(self, batches: list[SpanBatch], transport: str) -> None:
        started = time.perf_counter()
        try:
            try:
                self.store.write_many(batches)
            except StoreUnavailable:
                self._store_failed_at = time.monotonic()
                raise
            self.commit_seconds.observe(time.perf_counter() - started)
            self._store_failed_at = None
        except ReceiverError:
            if len(batches) == 1:
                self._count(self.counters.failed_requests, transport, 1)
                self._count(self.counters.refused_spans, transport, batches[0].received)
            raise

    def _answer(self, batch: SpanBatch, transport: str) -> PB2ExportTraceServiceResponse:
        """The response for a committed batch, and its counts."""
        counters = self.counters
        self._count(counters.requests, transport, 1)
        refused = sum(batch.refused.values())
        rejected = batch.rejected + refused
        self._count(counters.accepted_spans, transport, batch.accepted - refused)
        response = PB2ExportTraceServiceResponse()
        if rejected:
            self._count(counters.refused_spans, transport, rejected)
            response.partial_success.rejected_spans = rejected
        if batch.dropped:
            # A warning in partial_success (rejected_spans 0): the spec's way to say "stored, but".
            self._count(counters.dropped_values, transport, sum(batch.dropped.values()))
        if rejected or batch.dropped:
            response.partial_success.error_message = batch.error_message()
        return response

    def _count(self, table: dict[str, int], transport: str, n: int) -> None:
        with self._counters_lock:  # written from the decode and the store threads
            self.counters.add(table, transport, n)

    def export_metrics(
        self, body: bytes, encoding: str | None, media: str, transport: str = "grpc"
    ) -> PB2ExportMetricsServiceResponse:
        request = decode(
            decompress(body, encoding, self.max_request_bytes),
            media,
            PB2ExportMetricsServiceRequest,
        )
        points = 0
        for rm in request.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    kind = metric.WhichOneof("data")
                    if kind is not None:
                        points += len(getattr(metric, kind).data_points)
        response = PB2ExportMetricsServiceResponse()
        if points:
            response.partial_success.rejected_data_points = points
            response.partial_success.error_message = _NOT_STORED.format(f"{points} data point(s)")
        return response

    def export_logs(
        self, body: bytes, encoding: str | None, media: str, transport: str = "grpc"
    ) -> PB2ExportLogsServiceResponse:
        """Commit the GenAI events of a logs request (message content for their spans)."""
        request = decode(
            decompress(body, encoding, self.max_request_bytes), media, PB2ExportLogsServiceRequest
        )
        batch = log_rows(request)
        if batch.rows:
            try:
                self.store.write_logs(batch.rows)
            except StoreUnavailable:
                self._store_failed_at = time.monotonic()
                self.counters.add(self.counters.failed_requests, transport, 1)
                raise
            self._store_failed_at = None
        response = PB2ExportLogsServiceResponse()
        if batch.rejected:
            response.partial_success.rejected_log_records = batch.rejected
            response.partial_success.error_message = _LOGS_NOT_STORED.format(batch.rejected)
        return response

    # -- async entry point for the transports --------------------------------------------

    async def export(
        self,
        signal: Signal,
        body: bytes,
        encoding: str | None,
        media: str,
        transport: Transport,
    ) -> Message:
        """The one export entry both transports call: the signal's request, committed, answered.

        Raises ``ReceiverError`` for anything the client should be told; the transport turns it
        into its answer through ``receiver.status.answer``.
        """
        started = time.perf_counter()
        try:
            if signal == "traces":
                return await self._export_traces(body, encoding, media, transport)
            exporter = self._exporters[signal]
            return await self.run(exporter, body, encoding, media, transport, stage="decode")
        finally:
            self.request_seconds[transport].observe(time.perf_counter() - started)

    async def _export_traces(
        self, body: bytes, encoding: str | None, media: str, transport: Transport
    ) -> Message:
        self._enter()
        loop = asyncio.get_running_loop()
        try:
            lane = self._decoder if len(body) < LARGE_BODY_BYTES else self._large_decoder
            batch, charged = await loop.run_in_executor(
                lane, self.decode_traces, body, encoding, media, transport
            )
            try:
                done: Future[PB2ExportTraceServiceResponse] = Future()
                self._commits.append(_Queued(batch, transport, done))
                await loop.run_in_executor(self._executor, self._commit_queued)
                response = await asyncio.wrap_future(done)
                if batch.outcomes or batch.root_outcomes:  # what can finish a rollout
                    self.changes.notify(
                        {rollout for rollout, _ in (*batch.outcomes, *batch.root_outcomes)}
                    )
                return response
            finally:
                self.budget.release(charged)
        finally:
            self._leave()

    async def run(
        self, fn: Callable[..., T], *args: object, stage: Stage = "store", kind: Kind = "otlp"
    ) -> T:
        """Queue ``fn`` on the store (or decode, or API write) thread, or refuse at once when
        too much of ``kind`` is queued."""
        self._enter(kind)
        executor = {"store": self._executor, "decode": self._decoder, "api": self._api}[stage]
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
        finally:
            self._leave(kind)

    def _enter(self, kind: Kind = "otlp") -> None:
        with self._lock:
            queued = self._in_flight_of[kind]
            if queued >= self.max_in_flight:
                raise Overloaded(f"{queued} requests already queued; retry later")
            self._in_flight_of[kind] = queued + 1
            self._in_flight += 1

    def _leave(self, kind: Kind = "otlp") -> None:
        with self._lock:
            self._in_flight_of[kind] -= 1
            self._in_flight -= 1
            self._last_request = time.monotonic()

    async def idle_work(self) -> None:
        """Hand the store thread to the store's background work (``Store.idle_work``) one step
        at a time: while no request came lately, and under ingest between commits; runs until
        cancelled or draining."""
        loop = asyncio.get_running_loop()
        more = True
        busy = False
        while not self.draining:
            await asyncio.sleep(0 if more else BUSY_POLL_SECONDS if busy else IDLE_POLL_SECONDS)
            busy = bool(
                self._in_flight or time.monotonic() - self._last_request < IDLE_AFTER_SECONDS
            )
            if busy and (self._commits or self._in_flight > BUSY_STEP_MAX_IN_FLIGHT):
                await asyncio.sleep(BUSY_POLL_SECONDS)
                continue
            try:
                more = await loop.run_in_executor(self._executor, self.store.idle_work)
            except RuntimeError:  # the executor shut down under us
                return

    def close(self) -> None:
        """Wait for the request being decoded and the one being committed; requests still
        queued were never answered (their transports have stopped), so they are dropped:
        shutdown takes one bounded decode and one commit past ``--shutdown-timeout``."""
        self._decoder.shutdown(wait=True, cancel_futures=True)
        self._large_decoder.shutdown(wait=True, cancel_futures=True)
        self._api.shutdown(wait=True, cancel_futures=True)
        self._executor.shutdown(wait=True)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def ready(self) -> bool:
        """Ready to store: the store is open, its last commit did not fail, not shutting down."""
        if self.draining or not self.store.ready():
            return False
        failed = self._store_failed_at
        return failed is None or time.monotonic() - failed > NOT_READY_AFTER_FAILURE_SECONDS
