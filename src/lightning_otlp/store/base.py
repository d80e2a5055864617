"""The interface every store implements; the receiver never knows which one it has."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from ..batch import SpanBatch


@dataclass(frozen=True, slots=True)
class WriteResult:
    stored: int
    duplicates: int


class Store(Protocol):
    """Durable home for rollouts, attempts and spans.

    ``write`` commits one request's batch in one transaction before it returns, or raises
    ``StoreUnavailable`` having committed nothing.
    """

    url: str

    def open(self) -> None: ...

    def close(self) -> None: ...

    def ready(self) -> bool: ...

    def write(self, batch: SpanBatch) -> WriteResult: ...

    def rollouts(self) -> Iterator[dict[str, Any]]:
        """AttemptedRollout records (agentlightning 0.3 field names), oldest first."""
        ...

    def spans(
        self, rollout_id: str | None = None, attempt_id: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Span records in sequence order within each attempt."""
        ...
