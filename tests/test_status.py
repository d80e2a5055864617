"""The one error map: every error class to its HTTP status and headers, gRPC code and trailers,
and the LightningStore API's JSON answer, a backend's defect included."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2

from lightning_otlp.api import LightningAPI
from lightning_otlp.api.wire import error as invalid
from lightning_otlp.errors import (
    BadRequest,
    InvalidRequest,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    ReceiverError,
    RequestTimeout,
    StoreUnavailable,
    Unauthenticated,
    Unavailable,
    UnsupportedMediaType,
)
from lightning_otlp.receiver.status import answer, api_answer
from lightning_otlp.store.lightning import NotFound as StoreNotFound

RETRY = [(b"retry-after", b"7")]
OTLP_CASES = [
    (InvalidRequest("bad"), 400, [], grpc.StatusCode.INVALID_ARGUMENT),
    (PayloadTooLarge("big"), 413, [], grpc.StatusCode.RESOURCE_EXHAUSTED),
    (UnsupportedMediaType("xml"), 415, [], grpc.StatusCode.INVALID_ARGUMENT),
    (RequestTimeout("slow"), 408, [], grpc.StatusCode.DEADLINE_EXCEEDED),
    (
        Unauthenticated("who"),
        401,
        [(b"www-authenticate", b'Bearer realm="otlp"')],
        grpc.StatusCode.UNAUTHENTICATED,
    ),
    (Unavailable("later", 7), 503, RETRY, grpc.StatusCode.UNAVAILABLE),
    (Overloaded("busy", 7), 503, RETRY, grpc.StatusCode.UNAVAILABLE),
    (StoreUnavailable("locked", 7), 503, RETRY, grpc.StatusCode.UNAVAILABLE),
]


@pytest.mark.parametrize(("exc", "http", "headers", "code"), OTLP_CASES)
def test_each_receiver_error_has_one_otlp_answer(
    exc: ReceiverError, http: int, headers: list[tuple[bytes, bytes]], code: grpc.StatusCode
) -> None:
    result = answer(exc)
    assert (result.http_status, result.http_headers, result.grpc_code) == (http, headers, code)
    assert result.status.code == code.value[0]
    assert result.status.message == str(exc)
    trailers = dict(result.grpc_trailers)
    details = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])  # type: ignore[arg-type]
    assert details == result.status
    if http == 503:
        # Both places a client looks for the retry hint: the status details and the trailer.
        info = error_details_pb2.RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"])  # type: ignore[arg-type]
        assert info.retry_delay.seconds == 7
        packed = error_details_pb2.RetryInfo()
        assert details.details[0].Unpack(packed) and packed == info
    else:
        assert set(trailers) == {"grpc-status-details-bin"}
        assert not details.details


@pytest.mark.parametrize(("exc", "http", "headers", "code"), OTLP_CASES)
def test_the_api_answers_receiver_errors_with_the_same_status_and_headers(
    exc: ReceiverError, http: int, headers: list[tuple[bytes, bytes]], code: grpc.StatusCode
) -> None:
    result = api_answer(exc)
    assert (result.http_status, result.http_headers, result.body) == (
        http,
        headers,
        {"detail": str(exc)},
    )


def test_the_api_answers_its_own_errors_as_upstream_does() -> None:
    missing = invalid("missing", ["body", "rollouts"], "Field required", None)
    assert (api_answer(missing).http_status, api_answer(missing).body) == (
        422,
        {
            "detail": [
                {
                    "type": "missing",
                    "loc": ["body", "rollouts"],
                    "msg": "Field required",
                    "input": None,
                }
            ]
        },
    )
    bad = api_answer(BadRequest("Limit must be 0 or more, or -1 for no limit"))
    assert (bad.http_status, bad.body) == (
        400,
        {"detail": "Limit must be 0 or more, or -1 for no limit"},
    )
    gone = api_answer(NotFound("Rollout ro-1 not found"))
    assert (gone.http_status, gone.body) == (
        404,
        {"detail": "Rollout ro-1 not found", "error_type": "ValueError"},
    )
    assert StoreNotFound is NotFound


@pytest.mark.parametrize("exc", [ValueError("v"), KeyError("k"), TypeError("t"), RuntimeError("r")])
def test_anything_else_is_a_logged_defect_never_the_callers_mistake(
    exc: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, "lightning_otlp.api"):
        result = api_answer(exc)
    assert (result.http_status, result.http_headers) == (500, [])
    assert result.body == {"detail": str(exc), "error_type": type(exc).__name__}
    [record] = caplog.records
    assert record.message == "the LightningStore API failed" and record.exc_info is not None


@pytest.mark.parametrize("exc", [ValueError("v"), KeyError("k"), TypeError("t")])
def test_an_otlp_defect_is_a_logged_500_internal(
    exc: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, "lightning_otlp.receiver"):
        result = answer(exc)
    assert (result.http_status, result.grpc_code, result.http_headers) == (
        500,
        grpc.StatusCode.INTERNAL,
        [],
    )
    assert result.status.code == code_pb2.INTERNAL
    assert result.status.message == f"{type(exc).__name__}: {exc}"
    assert dict(result.grpc_trailers).keys() == {"grpc-status-details-bin"}
    [record] = caplog.records
    assert record.message == "the OTLP export failed" and record.exc_info is not None


def test_not_found_is_no_value_error() -> None:
    """Code that catches ``ValueError`` never takes a missing rollout for a defect, nor back."""
    assert not issubclass(NotFound, ValueError)


# -- the API over a backend that fails -------------------------------------------------------


class FailingBackend:
    """Just enough of a LightningStore backend: every call raises what it is given."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def reads_apart(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            raise self.exc

        call.__name__ = name
        return call


def _get(exc: Exception, path: str) -> httpx.Response:
    async def run(fn: Any, *args: Any) -> Any:
        return fn(*args)

    api = LightningAPI(FailingBackend(exc), run)  # type: ignore[arg-type]

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=api)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/v1/agl" + path)

    try:
        return asyncio.run(go())
    finally:
        api.close()


@pytest.mark.parametrize("exc", [ValueError("bad row"), KeyError("status"), TypeError("None")])
@pytest.mark.parametrize("path", ["/rollouts/ro-1", "/statistics"])
def test_a_backend_defect_answers_500_not_400(exc: Exception, path: str) -> None:
    response = _get(exc, path)
    assert response.status_code == 500
    assert response.json() == {"detail": str(exc), "error_type": type(exc).__name__}


def test_a_missing_rollout_answers_404_and_an_overloaded_store_503() -> None:
    response = _get(NotFound("Rollout ro-1 not found"), "/rollouts/ro-1")
    assert response.status_code == 404
    assert response.content == b'{"detail":"Rollout ro-1 not found","error_type":"ValueError"}'
    response = _get(StoreUnavailable("store busy", 3), "/rollouts/ro-1")
    assert (response.status_code, response.headers["retry-after"]) == (503, "3")
    assert response.json() == {"detail": "store busy"}


def test_codes_agree_with_google_rpc() -> None:
    for exc, _, _, code in OTLP_CASES:
        assert answer(exc).status.code == getattr(code_pb2, code.name)
