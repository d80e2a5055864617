"""The one place an error becomes an answer: HTTP status and headers, gRPC code and trailers.

OTLP (``answer``): retryable (``Unavailable``) becomes 503 + ``Retry-After`` / UNAVAILABLE +
RetryInfo; a client's mistake becomes 400 / INVALID_ARGUMENT with a ``google.rpc.Status`` body;
nothing a client sends becomes a 5xx other than 503; a defect is a logged 500 / INTERNAL. The
LightningStore API (``api_answer``): the same statuses for the same errors, its own
(``APIError``) as upstream answers them, and anything else a defect: a logged 500 with
upstream's body, never the caller's mistake.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2

from ..errors import (
    BadRequest,
    Invalid,
    NotFound,
    PayloadTooLarge,
    ReceiverError,
    RequestTimeout,
    Unauthenticated,
    Unavailable,
    UnsupportedMediaType,
)
from .rejectlog import RejectionLog

log = logging.getLogger("lightning_otlp.receiver")
api_log = logging.getLogger("lightning_otlp.api")
# A few lines per kind of answer a minute, then a count: 9,000 bad tokens are not 9,000 lines.
rejections = RejectionLog(log)

_RETRY_INFO_TRAILER: Final = "google.rpc.retryinfo-bin"
_STATUS_TRAILER: Final = "grpc-status-details-bin"


@dataclass(frozen=True, slots=True)
class Answer:
    """How to answer one error on either transport."""

    http_status: int
    grpc_code: grpc.StatusCode
    status: status_pb2.Status  # the body (HTTP) and the status details (gRPC)
    retry_after: int | None

    @property
    def http_headers(self) -> list[tuple[bytes, bytes]]:
        headers: list[tuple[bytes, bytes]] = []
        if self.retry_after is not None:
            headers.append((b"retry-after", str(self.retry_after).encode()))
        if self.http_status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="otlp"'))
        return headers

    @property
    def grpc_trailers(self) -> tuple[tuple[str, str | bytes], ...]:
        """Both trailers: the Collector reads the status details, the Python exporter RetryInfo."""
        trailers: list[tuple[str, str | bytes]] = [
            (_STATUS_TRAILER, self.status.SerializeToString())
        ]
        if self.retry_after is not None:
            trailers.append((_RETRY_INFO_TRAILER, retry_info(self.retry_after).SerializeToString()))
        return tuple(trailers)


def answer(exc: Exception) -> Answer:
    """The answer for ``exc``, logged here (retryable at WARNING, a client's fault at INFO), a
    few lines per kind a minute; anything not a ``ReceiverError`` is a defect: logged with its
    traceback, 500 / INTERNAL, never the client's fault."""
    if not isinstance(exc, ReceiverError):
        log.error("the OTLP export failed", exc_info=exc)
        status = status_pb2.Status(code=code_pb2.INTERNAL, message=f"{type(exc).__name__}: {exc}")
        return Answer(500, grpc.StatusCode.INTERNAL, status, None)
    retry_after = None
    if isinstance(exc, Unavailable):
        http, code, rpc = 503, grpc.StatusCode.UNAVAILABLE, code_pb2.UNAVAILABLE
        retry_after = exc.retry_after
    elif isinstance(exc, PayloadTooLarge):
        http, code, rpc = 413, grpc.StatusCode.RESOURCE_EXHAUSTED, code_pb2.RESOURCE_EXHAUSTED
    elif isinstance(exc, UnsupportedMediaType):
        http, code, rpc = 415, grpc.StatusCode.INVALID_ARGUMENT, code_pb2.INVALID_ARGUMENT
    elif isinstance(exc, RequestTimeout):
        http, code, rpc = 408, grpc.StatusCode.DEADLINE_EXCEEDED, code_pb2.DEADLINE_EXCEEDED
    elif isinstance(exc, Unauthenticated):
        http, code, rpc = 401, grpc.StatusCode.UNAUTHENTICATED, code_pb2.UNAUTHENTICATED
    else:
        http, code, rpc = 400, grpc.StatusCode.INVALID_ARGUMENT, code_pb2.INVALID_ARGUMENT
    status = status_pb2.Status(code=rpc, message=str(exc))
    if retry_after is not None:
        status.details.add().Pack(retry_info(retry_after))
    level = logging.WARNING if retry_after is not None else logging.INFO
    rejections.refused(level, f"{http} / {code.name}", str(exc))
    return Answer(http, code, status, retry_after)


@dataclass(frozen=True, slots=True)
class APIAnswer:
    """How to answer one error on the LightningStore API: upstream's status and JSON body."""

    http_status: int
    body: dict[str, Any]
    http_headers: list[tuple[bytes, bytes]]


def api_answer(exc: Exception) -> APIAnswer:
    """The LightningStore API's answer for ``exc``: 422 and 400 for the caller's mistakes, 404
    for a rollout or attempt that does not exist (upstream answers its ``ValueError`` with 500,
    which its client retries after 1, 2 and 5 s before raising; the caller's mistake is not
    retried here), the receiver's own errors as OTLP answers them, anything else logged with
    its traceback and answered 500 with upstream's body."""
    if isinstance(exc, Invalid):
        return APIAnswer(422, {"detail": exc.errors}, [])
    if isinstance(exc, BadRequest):
        return APIAnswer(400, {"detail": str(exc)}, [])
    if isinstance(exc, ReceiverError):
        result = answer(exc)
        return APIAnswer(result.http_status, {"detail": str(exc)}, result.http_headers)
    if isinstance(exc, NotFound):
        api_log.info("answering %s: %s", type(exc).__name__, exc)
        return APIAnswer(404, {"detail": str(exc), "error_type": "ValueError"}, [])
    api_log.error("the LightningStore API failed", exc_info=exc)
    return APIAnswer(500, {"detail": str(exc), "error_type": type(exc).__name__}, [])


def retry_info(seconds: int) -> error_details_pb2.RetryInfo:
    info = error_details_pb2.RetryInfo()
    info.retry_delay.seconds = seconds
    return info
