"""OTLP/gRPC (``receiver/transport/grpc.py``) in process: a real ``grpc.aio`` server over a real
pipeline and SQLite store, called through a real client channel; no receiver process."""

from __future__ import annotations

import asyncio
import gzip
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
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

from lightning_otlp.receiver.auth import BearerAuth
from lightning_otlp.receiver.pipeline import Pipeline
from lightning_otlp.receiver.route import RoutingConfig
from lightning_otlp.receiver.transport.grpc import (
    LOGS_SERVICE,
    METRICS_SERVICE,
    TRACE_SERVICE,
    build_server,
)
from lightning_otlp.store import SQLiteStore

from .payloads import make_request, make_span

TRACES = f"/{TRACE_SERVICE}/Export"
RID, AID = "ro-0123456789ab", "at-01234567"
IDS = {"agentlightning.rollout_id": RID, "agentlightning.attempt_id": AID}

Call = Callable[[grpc.aio.Channel], Awaitable[Any]]


def serve(pipeline: Pipeline, call: Call, *, auth: BearerAuth | None = None) -> Any:
    """Start a server on a free port, run ``call`` with a channel to it, stop the server."""

    async def go() -> Any:
        server, port = build_server(pipeline, "127.0.0.1:0", auth=auth)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await call(channel)
        finally:
            await server.stop(None)

    return asyncio.run(go())


def export(body: bytes, **kwargs: Any) -> Call:
    async def call(channel: grpc.aio.Channel) -> bytes:
        result: bytes = await channel.unary_unary(TRACES)(body, timeout=30, **kwargs)
        return result

    return call


def refused(pipeline: Pipeline, body: bytes, **kwargs: Any) -> grpc.aio.AioRpcError:
    async def call(channel: grpc.aio.Channel) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await export(body, **kwargs)(channel)
        return info.value

    error: grpc.aio.AioRpcError = serve(pipeline, call)
    return error


def trailers(error: grpc.aio.AioRpcError) -> dict[str, Any]:
    return {key: value for key, value in error.trailing_metadata() or ()}


def status_details(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    return status_pb2.Status.FromString(trailers(error)["grpc-status-details-bin"])


@pytest.fixture
def store() -> Any:
    store = SQLiteStore(":memory:", synchronous="OFF")
    store.open()
    yield store
    store.close()


@pytest.fixture
def pipeline(store: SQLiteStore) -> Any:
    pipeline = Pipeline(store)
    yield pipeline
    pipeline.close()


def stored(store: SQLiteStore) -> list[str]:
    return sorted(s["name"] for s in store.spans())


def test_a_request_is_stored_and_answered_with_an_empty_response(
    pipeline: Pipeline, store: SQLiteStore
) -> None:
    body = make_request([make_span("a", attributes=IDS), make_span("b")]).SerializeToString()
    response = PB2ExportTraceServiceResponse.FromString(serve(pipeline, export(body)))
    assert not response.HasField("partial_success")
    assert stored(store) == ["a", "b"]


def test_a_gzip_request_is_inflated(pipeline: Pipeline, store: SQLiteStore) -> None:
    body = make_request([make_span("zipped", attributes=IDS)]).SerializeToString()
    response = serve(pipeline, export(body, compression=grpc.Compression.Gzip))
    assert PB2ExportTraceServiceResponse.FromString(response) == PB2ExportTraceServiceResponse()
    assert stored(store) == ["zipped"]


def test_spans_the_policy_refuses_are_a_partial_success(store: SQLiteStore) -> None:
    pipeline = Pipeline(store, RoutingConfig(fallback="reject"))
    try:
        spans = [make_span("kept", attributes=IDS), make_span("orphan"), make_span("orphan")]
        body = make_request(spans).SerializeToString()
        response = PB2ExportTraceServiceResponse.FromString(serve(pipeline, export(body)))
    finally:
        pipeline.close()
    assert response.partial_success.rejected_spans == 2
    assert "fallback policy is 'reject'" in response.partial_success.error_message
    assert stored(store) == ["kept"]


def test_a_malformed_message_is_invalid_argument_not_internal(
    pipeline: Pipeline, store: SQLiteStore
) -> None:
    error = refused(pipeline, b"\xff\xff\xff\xff")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed protobuf" in (error.details() or "")
    details = status_details(error)
    assert details.code == code_pb2.INVALID_ARGUMENT and not details.details
    assert "google.rpc.retryinfo-bin" not in trailers(error)  # permanent: no retry hint
    assert stored(store) == []


def test_a_call_without_a_message_is_invalid_argument(pipeline: Pipeline) -> None:
    async def call(channel: grpc.aio.Channel) -> grpc.aio.AioRpcError:
        async def nothing() -> AsyncIterator[bytes]:
            return
            yield b""

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.stream_unary(TRACES)(nothing(), timeout=30)
        return info.value

    error = serve(pipeline, call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "the call carried no request message"


def test_over_the_size_limit_is_resource_exhausted_plain_or_inflated(store: SQLiteStore) -> None:
    pipeline = Pipeline(store, max_request_bytes=64 * 1024)
    try:
        big = make_request([make_span("x" * 70_000, attributes=IDS)]).SerializeToString()
        assert refused(pipeline, big).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Small on the wire, past the limit once inflated.
        assert len(gzip.compress(big)) < 64 * 1024
        error = refused(pipeline, big, compression=grpc.Compression.Gzip)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Just under the limit is taken.
        under = make_request([make_span("y" * 60_000, attributes=IDS)]).SerializeToString()
        assert len(under) < 64 * 1024
        assert serve(pipeline, export(under)) == b""
    finally:
        pipeline.close()
    assert stored(store) == ["y" * 60_000]


def test_no_room_in_the_memory_budget_is_unavailable_with_retry_info(store: SQLiteStore) -> None:
    pipeline = Pipeline(store, max_request_memory=1024)
    try:
        body = make_request([make_span("z" * 2000, attributes=IDS)]).SerializeToString()
        error = refused(pipeline, body)
    finally:
        pipeline.close()
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    _assert_retry_hint(error, 1)
    assert stored(store) == []


def test_a_locked_store_is_unavailable_with_retry_info_and_the_retry_succeeds(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "spans.db")
    store = SQLiteStore(path, busy_timeout=0.1)
    store.open()
    pipeline = Pipeline(store)
    body = make_request([make_span("later", attributes=IDS)]).SerializeToString()
    locker = sqlite3.connect(path, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        error = refused(pipeline, body)
        locker.execute("ROLLBACK")
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        _assert_retry_hint(error, 1)
        assert serve(pipeline, export(body)) == b""
        assert stored(store) == ["later"]
    finally:
        locker.close()
        pipeline.close()
        store.close()


def _assert_retry_hint(error: grpc.aio.AioRpcError, seconds: int) -> None:
    """Both places a client reads it: the Collector the status details, Python the trailer."""
    details = status_details(error)
    assert details.code == code_pb2.UNAVAILABLE
    packed = error_details_pb2.RetryInfo()
    assert details.details[0].Unpack(packed) and packed.retry_delay.seconds == seconds
    hint = error_details_pb2.RetryInfo.FromString(trailers(error)["google.rpc.retryinfo-bin"])
    assert hint.retry_delay.seconds == seconds


@pytest.mark.parametrize("defect", [ValueError("bad row"), KeyError("status"), TypeError("None")])
def test_a_store_defect_is_internal_never_invalid_argument(
    pipeline: Pipeline,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    defect: Exception,
) -> None:
    def broken(batches: object) -> None:
        raise defect

    monkeypatch.setattr(pipeline.store, "write_many", broken)
    error = refused(pipeline, make_request([make_span("x", attributes=IDS)]).SerializeToString())
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == f"{type(defect).__name__}: {defect}"
    assert status_details(error).code == code_pb2.INTERNAL
    assert "google.rpc.retryinfo-bin" not in trailers(error)
    assert "the OTLP export failed" in caplog.text


def test_a_bearer_token_is_required_before_the_message_is_read(
    pipeline: Pipeline, store: SQLiteStore
) -> None:
    auth = BearerAuth((b"s3cret",))
    body = make_request([make_span("guarded", attributes=IDS)]).SerializeToString()

    async def calls(channel: grpc.aio.Channel) -> tuple[Any, Any, bytes]:
        results = []
        for metadata in [None, (("authorization", "Bearer wrong"),)]:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await export(body, metadata=metadata)(channel)
            results.append(info.value)
        good = await export(body, metadata=(("authorization", "Bearer s3cret"),))(channel)
        return results[0], results[1], good

    missing, wrong, good = serve(pipeline, calls, auth=auth)
    for error in (missing, wrong):
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert status_details(error).code == code_pb2.UNAUTHENTICATED
    assert good == b""
    assert stored(store) == ["guarded"]


def test_metrics_and_logs_are_answered_honestly(pipeline: Pipeline) -> None:
    metrics = PB2ExportMetricsServiceRequest()
    metric = metrics.resource_metrics.add().scope_metrics.add().metrics.add()
    metric.name = "requests"
    metric.sum.data_points.add().as_int = 3
    metric.sum.data_points.add().as_int = 4
    logs = PB2ExportLogsServiceRequest()
    logs.resource_logs.add().scope_logs.add().log_records.add().body.string_value = "hello"

    async def call(channel: grpc.aio.Channel) -> tuple[bytes, bytes]:
        m = await channel.unary_unary(f"/{METRICS_SERVICE}/Export")(
            metrics.SerializeToString(), timeout=30
        )
        log = await channel.unary_unary(f"/{LOGS_SERVICE}/Export")(
            logs.SerializeToString(), timeout=30
        )
        return m, log

    m, log = serve(pipeline, call)
    answer = PB2ExportMetricsServiceResponse.FromString(m)
    assert answer.partial_success.rejected_data_points == 2
    assert "not stored" in answer.partial_success.error_message
    # A log record that is no GenAI event of a span is not kept, and says so.
    logs_answer = PB2ExportLogsServiceResponse.FromString(log)
    assert logs_answer.partial_success.rejected_log_records == 1
