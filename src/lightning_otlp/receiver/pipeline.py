"""The one export path both transports share: decompress, decode, route, store, answer."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final, Literal, TypeVar

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

from ..errors import Overloaded, ReceiverError, StoreUnavailable
from ..store import Store
from .decode import DEFAULT_MAX_REQUEST_BYTES, decode, decode_traces, decompress
from .metrics import Histogram
from .route import RoutingConfig, route

log = logging.getLogger("lightning_otlp")

DEFAULT_MAX_IN_FLIGHT: Final = 64
# After a failed commit, readiness stays false this long unless a commit succeeds first.
NOT_READY_AFTER_FAILURE_SECONDS: Final = 5.0
_NOT_STORED: Final = "lightning-otlp stores traces only; {} were not stored"

T = TypeVar("T")
# The OTLP signals; each has one export entry that both transports call.
Signal = Literal["traces", "metrics", "logs"]
SIGNALS: Final[tuple[Signal, ...]] = ("traces", "metrics", "logs")
Transport = Literal["grpc", "http"]


@dataclass(slots=True)
class Counters:
    """Totals since start, named after the Collector's own receiver metrics."""

    accepted_spans: dict[str, int] = field(default_factory=dict)
    refused_spans: dict[str, int] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)
    failed_requests: dict[str, int] = field(default_factory=dict)
    # Spans stored without a value the receiver could not use (a sequence id out of range...).
    dropped_values: dict[str, int] = field(default_factory=dict)

    def add(self, table: dict[str, int], transport: str, n: int) -> None:
        table[transport] = table.get(transport, 0) + n


class Pipeline:
    """Runs exports one at a time on a single store thread, so the store needs no locking.

    Args:
        store: an opened store.
        routing: how spans without explicit ids find their rollout.
        max_request_bytes: limit on a request after decompression.
        max_in_flight: requests queued for the store before new ones get "unavailable".
    """

    def __init__(
        self,
        store: Store,
        routing: RoutingConfig | None = None,
        *,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
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
        # Per request, never per span: latency from receipt to answer, and store commit time.
        self.request_seconds = {"grpc": Histogram(), "http": Histogram()}
        self.commit_seconds = Histogram()
        self.draining = False
        self._store_failed_at: float | None = None
        self._in_flight = 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="lightning-otlp-store")
        self._exporters: dict[Signal, Callable[..., Message]] = {
            "traces": self.export_traces,
            "metrics": self.export_metrics,
            "logs": self.export_logs,
        }

    # -- synchronous stages (run on the store thread) ------------------------------------

    def export_traces(
        self, body: bytes, encoding: str | None, media: str, transport: str = "grpc"
    ) -> PB2ExportTraceServiceResponse:
        """Commit a trace export request; return its response only once it is durable."""
        batch = None
        try:
            request = decode_traces(decompress(body, encoding, self.max_request_bytes), media)
            batch = route(request, self.routing)
            started = time.perf_counter()
            try:
                self.store.write(batch)
            except StoreUnavailable:
                self._store_failed_at = time.monotonic()
                raise
            self.commit_seconds.observe(time.perf_counter() - started)
            self._store_failed_at = None
        except ReceiverError:
            self.counters.add(self.counters.failed_requests, transport, 1)
            if batch is not None:
                self.counters.add(self.counters.refused_spans, transport, batch.received)
            raise
        counters = self.counters
        counters.add(counters.requests, transport, 1)
        counters.add(counters.accepted_spans, transport, batch.accepted)
        response = PB2ExportTraceServiceResponse()
        if batch.rejected:
            counters.add(counters.refused_spans, transport, batch.rejected)
            response.partial_success.rejected_spans = batch.rejected
        if batch.dropped:
            # A warning in partial_success (rejected_spans 0): the spec's way to say "stored, but".
            counters.add(counters.dropped_values, transport, sum(batch.dropped.values()))
        if batch.rejected or batch.dropped:
            response.partial_success.error_message = batch.error_message()
        return response

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
        request = decode(
            decompress(body, encoding, self.max_request_bytes), media, PB2ExportLogsServiceRequest
        )
        records = sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)
        response = PB2ExportLogsServiceResponse()
        if records:
            response.partial_success.rejected_log_records = records
            response.partial_success.error_message = _NOT_STORED.format(f"{records} log record(s)")
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
        exporter = self._exporters[signal]
        started = time.perf_counter()
        try:
            return await self.run(exporter, body, encoding, media, transport)
        finally:
            self.request_seconds[transport].observe(time.perf_counter() - started)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Queue ``fn`` on the store thread, or refuse at once when too much is queued."""
        with self._lock:
            if self._in_flight >= self.max_in_flight:
                raise Overloaded(f"{self._in_flight} requests already queued; retry later")
            self._in_flight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        finally:
            with self._lock:
                self._in_flight -= 1

    def close(self) -> None:
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
