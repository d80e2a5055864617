"""The interface every store implements; the receiver and the CLI never know which one they have."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

from ..batch import SpanBatch

if TYPE_CHECKING:
    pass


@dataclass(frozen=True, slots=True)
class WriteResult:
    stored: int
    duplicates: int


class Metric(NamedTuple):
    """One self-metric a store reports, rendered on ``/metrics`` as it is."""

    name: str
    help: str
    kind: Literal["counter", "gauge"]
    value: float


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

    def write_many(self, batches: Sequence[SpanBatch]) -> list[WriteResult]:
        """Commit several requests' batches in one transaction (one sync to disk), as if
        written one after the other; all are committed or none is."""
        ...

    def write_logs(self, rows: list[tuple[bytes, bytes, bytes, float | None, bytes]]) -> int:
        """Commit GenAI log records, keyed by their span (``store.logs``), in one transaction."""
        ...

    def rollouts(self) -> Iterator[dict[str, Any]]:
        """AttemptedRollout records (agentlightning 0.3 field names), oldest first."""
        ...

    def spans(
        self, rollout_id: str | None = None, attempt_id: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Span records in sequence order within each attempt."""
        ...

    def summaries(self) -> list[dict[str, Any]]:
        """One row of figures per rollout, for people (``rollouts --table``)."""
        ...

    def metrics(self) -> list[Metric]:
        """The store's own counters and gauges; read on every ``/metrics`` scrape."""
        ...

    def status(self) -> dict[str, Any]:
        """What ``lightning-otlp status`` prints: the store's state, without the network."""
        ...

    def idle_work(self) -> bool:
        """One short step of background work (a few milliseconds), run on the store thread
        while no batch waits for it; True while more is left."""
        ...

    def check(self, full: bool = False) -> list[str]:
        """Damage found in the store's files (empty when none); ``full`` checks everything."""
        ...
