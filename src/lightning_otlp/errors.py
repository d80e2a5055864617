"""Every error a request can end in; ``receiver/status.py`` alone maps them to answers.

Anything else a request ends in (a ``ValueError``, ``KeyError``, ``TypeError`` from a backend
included) is a defect, answered as one (a logged 500), never as the caller's mistake.

ReceiverError              OTLP and the LightningStore API alike
 ├── InvalidRequest        a client's mistake: permanent
 ├── PayloadTooLarge       over the size limit: permanent
 ├── UnsupportedMediaType  HTTP only
 ├── Unauthenticated       no valid bearer token
 ├── RequestTimeout        the body did not arrive in time (HTTP only)
 └── Unavailable           retryable, with a hint of when
      ├── Overloaded       too many requests in flight
      └── StoreUnavailable the store cannot commit right now
APIError                   a LightningStore API call the caller got wrong (upstream's JSON bodies)
 ├── Invalid               the body or query does not match upstream's model: 422
 ├── BadRequest            upstream's own checks refuse it: 400
 └── NotFound              the rollout or attempt it names does not exist: 404
StoreDamaged               a store file that cannot give back what it holds (reads, not requests)
"""

from __future__ import annotations

from typing import Any, Final

DEFAULT_RETRY_AFTER_SECONDS: Final = 1


class ReceiverError(Exception):
    """Base class: every error a request can end in."""


class InvalidRequest(ReceiverError):
    pass


class PayloadTooLarge(ReceiverError):
    pass


class RequestTimeout(ReceiverError):
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


class APIError(Exception):
    """Base class: a LightningStore API call the caller got wrong."""


class Invalid(APIError):
    """422: the request does not match the model (FastAPI's ``RequestValidationError``)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors)
        self.errors = errors


class BadRequest(APIError):
    """400 with ``{"detail": message}`` (upstream's ``HTTPException(status_code=400)``)."""


class NotFound(APIError):
    """A rollout or attempt the call names does not exist (upstream raises ``ValueError``).

    Not a ``ValueError`` here, so no code that catches one takes a defect for this."""


class StoreDamaged(Exception):
    """A store file that cannot give back what it holds (a read, not a request, fails)."""
