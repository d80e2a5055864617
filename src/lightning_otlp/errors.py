"""Errors and the one place that maps them to HTTP and gRPC statuses.

ReceiverError
 ├── InvalidRequest        400 / INVALID_ARGUMENT    (permanent: a client's mistake)
 ├── PayloadTooLarge       413 / RESOURCE_EXHAUSTED  (permanent)
 ├── UnsupportedMediaType  415                       (HTTP only)
 ├── Unauthenticated       401 / UNAUTHENTICATED
 └── Unavailable           503 + Retry-After / UNAVAILABLE + RetryInfo (retryable)
      ├── Overloaded       too many requests in flight
      └── StoreUnavailable the store cannot commit right now
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import grpc

DEFAULT_RETRY_AFTER_SECONDS: Final = 1


class ReceiverError(Exception):
    """Base class: every error a request can end in."""


class InvalidRequest(ReceiverError):
    pass


class PayloadTooLarge(ReceiverError):
    pass


class UnsupportedMediaType(ReceiverError):
    pass


class Unauthenticated(ReceiverError):
    pass


class Unavailable(ReceiverError):
    def __init__(self, message: str, retry_after: int = DEFAULT_RETRY_AFTER_SECONDS) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Overloaded(Unavailable):
    pass


class StoreUnavailable(Unavailable):
    pass


@dataclass(frozen=True, slots=True)
class Outcome:
    http_status: int
    grpc_code: grpc.StatusCode
    rpc_code: int  # google.rpc.Code, for the google.rpc.Status body
    retry_after: int | None


def outcome(exc: ReceiverError) -> Outcome:
    if isinstance(exc, Unavailable):
        return Outcome(503, grpc.StatusCode.UNAVAILABLE, 14, exc.retry_after)
    if isinstance(exc, PayloadTooLarge):
        return Outcome(413, grpc.StatusCode.RESOURCE_EXHAUSTED, 8, None)
    if isinstance(exc, UnsupportedMediaType):
        return Outcome(415, grpc.StatusCode.INVALID_ARGUMENT, 3, None)
    if isinstance(exc, Unauthenticated):
        return Outcome(401, grpc.StatusCode.UNAUTHENTICATED, 16, None)
    return Outcome(400, grpc.StatusCode.INVALID_ARGUMENT, 3, None)
