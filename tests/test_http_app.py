"""The OTLP/HTTP ASGI app in process, through httpx's ASGI transport: no sockets, milliseconds.

The end-to-end suites (test_transport.py) send the same kinds of request to a real ``serve``.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest as PB2ExportLogsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceResponse as PB2ExportTraceServiceResponse,
)

from lightning_otlp.errors import StoreUnavailable
from lightning_otlp.receiver.auth import BearerAuth
from lightning_otlp.receiver.pipeline import Pipeline
from lightning_otlp.receiver.route import RoutingConfig
from lightning_otlp.receiver.transport.http import HTTPReceiver
from lightning_otlp.store import SQLiteStore

from .payloads import make_request, make_span

PB = {"content-type": "application/x-protobuf"}
IDS = {"agentlightning.rollout_id": "ro-0000000000aa", "agentlightning.attempt_id": "at-000000aa"}


@pytest.fixture
def app(store: SQLiteStore) -> Iterator[HTTPReceiver]:
    pipeline = Pipeline(store, RoutingConfig(), max_request_bytes=64 * 1024)
    yield HTTPReceiver(pipeline)
    pipeline.close()


def post(app: HTTPReceiver, path: str = "/v1/traces", **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://otlp") as client:
            return await client.post(path, **kwargs)

    return asyncio.run(go())


def body(spans: int = 3) -> bytes:
    return make_request(
        [make_span(f"s{i}", attributes=IDS) for i in range(spans)]
    ).SerializeToString()


def test_protobuf_export_is_stored_and_answered_in_protobuf(
    app: HTTPReceiver, store: SQLiteStore
) -> None:
    response = post(app, content=body(3), headers=PB)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-protobuf"
    answer = PB2ExportTraceServiceResponse.FromString(response.content)
    assert answer.partial_success.rejected_spans == 0
    assert store.count_spans() == 3


def test_gzip_body_is_inflated(app: HTTPReceiver, store: SQLiteStore) -> None:
    response = post(app, content=gzip.compress(body(2)), headers={**PB, "content-encoding": "gzip"})
    assert response.status_code == 200
    assert store.count_spans() == 2


def test_json_export_with_hex_ids(app: HTTPReceiver, store: SQLiteStore) -> None:
    doc = {
        "resourceSpans": [
            {
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": "0af7651916cd43dd8448eb211c80319c",
                                "spanId": "b7ad6b7169203331",
                                "name": "json",
                                "startTimeUnixNano": "1700000000000000000",
                                "endTimeUnixNano": "1700000001000000000",
                            }
                        ]
                    }
                ]
            }
        ]
    }
    response = post(app, json=doc)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {}
    (span,) = store.spans()
    assert span["trace_id"] == "0af7651916cd43dd8448eb211c80319c"


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"content": b"\xff\xff", "headers": PB}, 400, code_pb2.INVALID_ARGUMENT),
        ({"content": b"{", "headers": {"content-type": "application/json"}}, 400, None),
        ({"content": body(), "headers": {"content-type": "text/plain"}}, 415, None),
        (
            {"content": body(), "headers": {**PB, "content-encoding": "br"}},
            400,
            code_pb2.INVALID_ARGUMENT,
        ),
        ({"content": b"\0" * (65 * 1024), "headers": PB}, 413, code_pb2.RESOURCE_EXHAUSTED),
    ],
)
def test_client_mistakes_get_their_status_and_a_status_body(
    app: HTTPReceiver,
    store: SQLiteStore,
    kwargs: dict[str, Any],
    status: int,
    code: int | None,
) -> None:
    response = post(app, **kwargs)
    assert response.status_code == status
    if code is not None:
        assert status_pb2.Status.FromString(response.content).code == code
    assert store.count_spans() == 0


def test_wrong_method_and_path(app: HTTPReceiver) -> None:
    async def go() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://otlp") as client:
            return await client.get("/v1/traces"), await client.post("/v2/traces")

    wrong_method, wrong_path = asyncio.run(go())
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"
    assert wrong_path.status_code == 404


def test_store_failure_is_retryable_503_with_retry_after(
    app: HTTPReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(batch: object) -> None:
        raise StoreUnavailable("disk full", retry_after=7)

    monkeypatch.setattr(app.pipeline.store, "write", failing)
    response = post(app, content=body(), headers=PB)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"
    status = status_pb2.Status.FromString(response.content)
    assert status.code == code_pb2.UNAVAILABLE
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert info.retry_delay.seconds == 7


@pytest.mark.parametrize("defect", [ValueError("bad row"), KeyError("status"), TypeError("None")])
def test_a_store_defect_is_a_logged_500_never_the_clients_400(
    app: HTTPReceiver,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    defect: Exception,
) -> None:
    def broken(batches: object) -> None:
        raise defect

    monkeypatch.setattr(app.pipeline.store, "write_many", broken)
    span = {"traceId": "ab" * 16, "spanId": "cd" * 8, "name": "j"}
    as_json = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).encode()
    for media, content in [("application/x-protobuf", body()), ("application/json", as_json)]:
        response = post(app, content=content, headers={"content-type": media})
        assert response.status_code == 500, response.text
        assert "retry-after" not in response.headers
        assert response.headers["content-type"] == media
        if media == "application/json":
            status = response.json()
            assert status["code"] == code_pb2.INTERNAL
            assert status["message"] == f"{type(defect).__name__}: {defect}"
        else:
            parsed = status_pb2.Status.FromString(response.content)
            assert parsed.code == code_pb2.INTERNAL and not parsed.details
    assert "the OTLP export failed" in caplog.text


def test_logs_are_answered_with_partial_success(app: HTTPReceiver) -> None:
    request = PB2ExportLogsServiceRequest()
    request.resource_logs.add().scope_logs.add().log_records.add().body.string_value = "hi"
    response = post(app, "/v1/logs", content=request.SerializeToString(), headers=PB)
    assert response.status_code == 200


def test_bearer_token_is_required_when_configured(store: SQLiteStore) -> None:
    pipeline = Pipeline(store, RoutingConfig())
    try:
        app = HTTPReceiver(pipeline, BearerAuth((b"secret",)))
        refused = post(app, content=body(), headers=PB)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        accepted = post(app, content=body(), headers={**PB, "authorization": "Bearer secret"})
        assert accepted.status_code == 200
        assert store.count_spans() == 3
    finally:
        pipeline.close()


def test_health_answers_json(app: HTTPReceiver) -> None:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://otlp") as client:
            return await client.get("/health")

    response = asyncio.run(go())
    assert response.status_code == 200
    assert json.loads(response.content) == {"status": "ok"}
