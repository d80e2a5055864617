"""Both transports against a real receiver: every bad input gets the status the OTLP spec asks
for, and nothing already acknowledged is lost."""

from __future__ import annotations

import gzip
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2
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

from .payloads import genai_request, make_request, make_span
from .support import ReceiverProcess

pytestmark = pytest.mark.e2e

LIMIT = 1 << 20
PB = {"content-type": "application/x-protobuf"}
JSON_CT = {"content-type": "application/json"}
TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
METRICS = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
LOGS = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReceiverProcess]:
    proc = ReceiverProcess(
        tmp_path_factory.mktemp("transport") / "r.db", "--max-request-bytes", str(LIMIT)
    ).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def channel(receiver: ReceiverProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(receiver.grpc_target) as ch:
        yield ch


def count(receiver: ReceiverProcess) -> int:
    with sqlite3.connect(receiver.db_path) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM spans").fetchone()[0])


@pytest.fixture
def acknowledged(receiver: ReceiverProcess) -> Iterator[int]:
    """Store one acknowledged request first; after the test, it and nothing else must be there."""
    response = httpx.post(
        receiver.traces_url, content=genai_request(10).SerializeToString(), headers=PB
    )
    assert response.status_code == 200
    before = count(receiver)
    yield before
    assert count(receiver) == before


def status_of(response: httpx.Response) -> status_pb2.Status:
    if response.headers["content-type"].startswith("application/json"):
        doc = response.json()
        return status_pb2.Status(code=doc.get("code", 0), message=doc.get("message", ""))
    return status_pb2.Status.FromString(response.content)


# -- HTTP ------------------------------------------------------------------------------------

BAD_HTTP = {
    "truncated protobuf": (genai_request(3).SerializeToString()[:-7], PB, 400),
    "garbage protobuf": (b"\x0a\xff\xff\xff\xff\x0f" + b"\x00" * 40, PB, 400),
    "invalid JSON": (b'{"resourceSpans": [', JSON_CT, 400),
    "short hex trace id": (
        json.dumps(
            {
                "resourceSpans": [
                    {"scopeSpans": [{"spans": [{"traceId": "abcd", "spanId": "0" * 15 + "1"}]}]}
                ]
            }
        ).encode(),
        JSON_CT,
        400,
    ),
    "9-byte span id": (make_request([make_span(span_id=b"\x01" * 9)]).SerializeToString(), PB, 400),
    "text/plain": (b"hello", {"content-type": "text/plain"}, 415),
    "no content type": (genai_request(1).SerializeToString(), {}, 415),
    "oversized": (b"\x00" * (LIMIT + 1), PB, 413),
}


@pytest.mark.parametrize("case", BAD_HTTP)
def test_http_bad_input(receiver: ReceiverProcess, acknowledged: int, case: str) -> None:
    body, headers, expected = BAD_HTTP[case]
    response = httpx.post(receiver.traces_url, content=body, headers=headers)
    assert response.status_code == expected, response.text
    if expected in (400, 413):
        status = status_of(response)
        assert status.message  # says what is wrong
        assert status.code in (3, 8)
        assert response.headers["content-type"] == headers["content-type"]


def test_http_unknown_encoding_is_400(receiver: ReceiverProcess, acknowledged: int) -> None:
    response = httpx.post(
        receiver.traces_url,
        content=genai_request(2).SerializeToString(),
        headers={**PB, "content-encoding": "br"},
    )
    assert response.status_code == 400
    assert "Content-Encoding" in status_of(response).message


def test_http_gzip_bomb_is_413(receiver: ReceiverProcess, acknowledged: int) -> None:
    bomb = gzip.compress(bytes(64 * LIMIT), compresslevel=9)
    assert len(bomb) < LIMIT
    response = httpx.post(
        receiver.traces_url, content=bomb, headers={**PB, "content-encoding": "gzip"}
    )
    assert response.status_code == 413


def test_http_chunked_gzip_json_accepted(receiver: ReceiverProcess) -> None:
    span = make_span("json-span", attributes={"k": "v"})
    doc = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "j"}}]
                },
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": span.trace_id.hex(),
                                "spanId": span.span_id.hex(),
                                "name": "json-span",
                                "kind": "SPAN_KIND_CLIENT",
                                "startTimeUnixNano": str(span.start_time_unix_nano),
                                "endTimeUnixNano": str(span.end_time_unix_nano),
                                "status": {"code": 1},
                            }
                        ]
                    }
                ],
            }
        ]
    }
    body = gzip.compress(json.dumps(doc).encode())

    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding: chunked
        for i in range(0, len(body), 50):
            yield body[i : i + 50]

    response = httpx.post(
        receiver.traces_url,
        content=chunks(),
        headers={"content-type": "application/json; charset=utf-8", "content-encoding": "gzip"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {}
    stored = [s for s in receiver.spans() if s["span_id"] == span.span_id.hex()]
    assert len(stored) == 1 and stored[0]["status"]["status_code"] == "OK"


def test_http_missing_ids_are_partial_success(receiver: ReceiverProcess) -> None:
    good = make_span("kept")
    request = make_request(
        [make_span("no-trace", trace_id=b""), make_span("zero", span_id=bytes(8)), good]
    )
    response = httpx.post(receiver.traces_url, content=request.SerializeToString(), headers=PB)
    assert response.status_code == 200
    answer = PB2ExportTraceServiceResponse.FromString(response.content)
    assert answer.partial_success.rejected_spans == 2
    assert "trace_id or span_id" in answer.partial_success.error_message
    assert [s["name"] for s in receiver.spans() if s["span_id"] == good.span_id.hex()] == ["kept"]


def test_http_retry_is_stored_once(receiver: ReceiverProcess) -> None:
    body = genai_request(50, seed=77).SerializeToString()
    first = httpx.post(receiver.traces_url, content=body, headers=PB)
    before = count(receiver)
    second = httpx.post(receiver.traces_url, content=body, headers=PB)
    assert first.status_code == second.status_code == 200
    assert count(receiver) == before


def test_http_other_signals_answer_honestly(receiver: ReceiverProcess) -> None:
    metrics = PB2ExportMetricsServiceRequest()
    metric = metrics.resource_metrics.add().scope_metrics.add().metrics.add(name="m")
    metric.gauge.data_points.add(as_int=1)
    metric.gauge.data_points.add(as_int=2)
    response = httpx.post(
        receiver.http_url + "/v1/metrics", content=metrics.SerializeToString(), headers=PB
    )
    assert response.status_code == 200
    answer = PB2ExportMetricsServiceResponse.FromString(response.content)
    assert answer.partial_success.rejected_data_points == 2
    logs = {"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {"stringValue": "x"}}]}]}]}
    response = httpx.post(receiver.http_url + "/v1/logs", json=logs)
    assert response.status_code == 200
    assert response.json()["partialSuccess"]["rejectedLogRecords"] == "1"


def test_http_paths_and_methods(receiver: ReceiverProcess) -> None:
    assert httpx.get(receiver.traces_url).status_code == 405
    assert httpx.get(receiver.traces_url).headers["allow"] == "POST"
    assert httpx.post(receiver.http_url + "/v2/traces", content=b"").status_code == 404
    assert httpx.get(receiver.http_url + "/health").status_code == 200


def test_http_empty_request_is_success(receiver: ReceiverProcess) -> None:
    response = httpx.post(receiver.traces_url, content=b"", headers=PB)
    assert response.status_code == 200
    assert (
        PB2ExportTraceServiceResponse.FromString(response.content)
        == PB2ExportTraceServiceResponse()
    )


# -- gRPC ------------------------------------------------------------------------------------


def test_grpc_malformed_is_invalid_argument(
    receiver: ReceiverProcess, channel: grpc.Channel, acknowledged: int
) -> None:
    export = channel.unary_unary(TRACES)
    for body in (b"\x0a\xff\xff\xff\xff\x0f", genai_request(3).SerializeToString()[:-5]):
        with pytest.raises(grpc.RpcError) as info:
            export(body, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details()


def test_grpc_oversized_and_gzip_bomb_are_resource_exhausted(
    receiver: ReceiverProcess, channel: grpc.Channel, acknowledged: int
) -> None:
    big = make_request(
        [make_span("big", attributes={"blob": "x" * (LIMIT + 10)})]
    ).SerializeToString()
    export = channel.unary_unary(TRACES)
    with pytest.raises(grpc.RpcError) as info:
        export(big, timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    bomb = make_request(
        [make_span("bomb", attributes={"zeros": "\0" * (8 * LIMIT)})]
    ).SerializeToString()
    with pytest.raises(grpc.RpcError) as info:
        export(bomb, timeout=10, compression=grpc.Compression.Gzip)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_grpc_gzip_request_and_other_signals(
    receiver: ReceiverProcess, channel: grpc.Channel
) -> None:
    request = genai_request(20, seed=5)
    raw = channel.unary_unary(TRACES)(
        request.SerializeToString(), timeout=10, compression=grpc.Compression.Gzip
    )
    assert PB2ExportTraceServiceResponse.FromString(raw) == PB2ExportTraceServiceResponse()
    wanted = {s.span_id.hex() for s in request.resource_spans[0].scope_spans[0].spans}
    assert wanted <= {s["span_id"] for s in receiver.spans()}
    logs = PB2ExportLogsServiceRequest()
    logs.resource_logs.add().scope_logs.add().log_records.add().body.string_value = "x"
    answer = PB2ExportLogsServiceResponse.FromString(
        channel.unary_unary(LOGS)(logs.SerializeToString())
    )
    assert answer.partial_success.rejected_log_records == 1
    empty = channel.unary_unary(METRICS)(PB2ExportMetricsServiceRequest().SerializeToString())
    assert PB2ExportMetricsServiceResponse.FromString(empty) == PB2ExportMetricsServiceResponse()


# -- the store cannot commit ----------------------------------------------------------------


def test_store_locked_is_retryable_on_both_transports(
    receiver: ReceiverProcess, channel: grpc.Channel
) -> None:
    """Another process holds the database's write lock: 503 / UNAVAILABLE with RetryInfo."""
    first = httpx.post(
        receiver.traces_url, content=genai_request(7).SerializeToString(), headers=PB
    )
    assert first.status_code == 200
    acknowledged = count(receiver)
    body = genai_request(5, seed=99).SerializeToString()
    locker = sqlite3.connect(receiver.db_path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        response = httpx.post(receiver.traces_url, content=body, headers=PB, timeout=30)
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) >= 1
        status = status_pb2.Status.FromString(response.content)
        assert status.code == 14
        info = error_details_pb2.RetryInfo()
        assert status.details[0].Unpack(info) and info.retry_delay.seconds >= 1

        call = channel.unary_unary(TRACES)
        with pytest.raises(grpc.RpcError) as err:
            call(body, timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        trailers = dict(err.value.trailing_metadata())
        details = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
        assert details.code == 14 and details.details[0].Unpack(error_details_pb2.RetryInfo())
        retry = error_details_pb2.RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"])
        assert retry.retry_delay.seconds >= 1
        assert count(receiver) == acknowledged  # read while locked: WAL readers are not blocked
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    # The client's retry after the lock is gone goes through, once.
    assert httpx.post(receiver.traces_url, content=body, headers=PB).status_code == 200
    assert count(receiver) == acknowledged + 5


def test_too_many_queued_requests_is_retryable(
    start_receiver: Callable[..., ReceiverProcess],
) -> None:
    """With the store thread busy and the queue full, a new request is refused at once (503)."""
    receiver = start_receiver("--max-in-flight", "1")
    locker = sqlite3.connect(receiver.db_path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # the first request waits on this lock in the store
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(
                httpx.post,
                receiver.traces_url,
                content=genai_request(3, seed=11).SerializeToString(),
                headers=PB,
                timeout=30,
            )
            deadline = time.monotonic() + 20
            while (
                "lightning_otlp_requests_in_flight 1"
                not in httpx.get(receiver.health_url + "/metrics").text
            ):  # wait until the first request holds the one place
                assert time.monotonic() < deadline, "the first request never reached the store"
                time.sleep(0.02)
            second = httpx.post(
                receiver.traces_url,
                content=genai_request(3, seed=12).SerializeToString(),
                headers=PB,
            )
            assert second.status_code == 503
            assert second.headers["retry-after"]
            assert "queued" in status_pb2.Status.FromString(second.content).message
            locker.execute("ROLLBACK")
            assert first.result().status_code == 200  # the lock went within the busy timeout
    finally:
        if locker.in_transaction:
            locker.execute("ROLLBACK")
        locker.close()
    assert count(receiver) == 3


def test_default_limit_takes_large_llm_batches_on_both_transports(
    start_receiver: Callable[..., ReceiverProcess],
) -> None:
    """grpcio's own default would refuse anything over 4 MiB; the receiver takes 64 MiB."""
    receiver = start_receiver()
    prompt = "x" * (5 << 20)  # one 5 MiB prompt attribute
    body = make_request([make_span("chat", attributes={"gen_ai.prompt": prompt})])
    with grpc.insecure_channel(receiver.grpc_target) as channel:
        channel.unary_unary(TRACES)(body.SerializeToString(), timeout=30)
    assert (
        httpx.post(
            receiver.traces_url,
            content=gzip.compress(body.SerializeToString()),
            headers={**PB, "content-encoding": "gzip"},
            timeout=30,
        ).status_code
        == 200
    )
    assert count(receiver) == 1  # the same span twice: stored once
    (span,) = receiver.spans()
    assert len(span["attributes"]["gen_ai.prompt"]) == 5 << 20
