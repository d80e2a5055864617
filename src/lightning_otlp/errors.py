"""Every error a request can end in; ``receiver/status.py`` alone maps them to answers.

ReceiverError
 ├── InvalidRequest        a client's mistake: permanent
 ├── PayloadTooLarge       over the size limit: permanent
 ├── UnsupportedMediaType  HTTP only
 ├── Unauthenticated       no valid bearer token
 ├── RequestTimeout        the body did not arrive in time (HTTP only)
 └── Unavailable           retryable, with a hint of when
      ├── Overloaded       too many requests in flight
      └── StoreUnavailable the store cannot commit right now
"""

from __future__ import annotations

from typing import Final

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


class StoreDamaged(Exception):
    """A store file that cannot give back what it holds (a read, not a request, fails)."""
