"""The small interfaces a store offers, each to one kind of caller: ingest (the pipeline), read
(the read commands) and ops (metrics, status, checks, idle work). The LightningStore API's is
``store/lightning.py``'s. The receiver and the CLI never know which store they have."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple, Protocol

from ..batch import SpanBatch
from ..defaults import DEFAULT_AFFINITY_WINDOW, SEQUENCE_IDS
from .logs import LogRows


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """What every store takes, whatever its backend, in one record (``wiring.open_store``).

    Attributes:
        affinity_window: seconds during which spans that went to a per-trace rollout move to
            the rollout their trace is later bound to.
        create: create the store when it does not exist (off for read-only tools).
        salvage: reads skip what a damaged store cannot give back, logging it, instead of
            failing.
        translate: read model-call spans of the GenAI conventions in Agent Lightning's shape
            (``lightning_otlp.translate``); False reads every span exactly as received.
        prepare_reads: build each span's record in the background (``idle_work``), so reading a
            rollout's spans back through the API is fast.
        sequence_ids: ``start-time`` or ``counter`` (``defaults.SEQUENCE_IDS``): how spans
            without an explicit sequence id get one.
    """

    affinity_window: float = DEFAULT_AFFINITY_WINDOW
    create: bool = True
    salvage: bool = False
    translate: bool = True
    prepare_reads: bool = True
    sequence_ids: str = SEQUENCE_IDS[0]

    def __post_init__(self) -> None:
        if self.sequence_ids not in SEQUENCE_IDS:
            raise ValueError(
                f"sequence_ids must be one of {SEQUENCE_IDS}, not {self.sequence_ids!r}"
            )


DEFAULT_OPTIONS: Final = StoreOptions()


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


class Ingest(Protocol):
    """What the pipeline commits through: traces in groups of requests, and GenAI log records.

    ``write`` commits one request's batch in one transaction before it returns, or raises
    ``StoreUnavailable`` having committed nothing.
    """

    url: str

    def open(self) -> None: ...

    def close(self) -> None: ...

    def ready(self) -> bool: ...

    def write(self, batch: SpanBatch) -> WriteResult: ...

    def write_many(self, batches: Sequence[SpanBatch]) -> list[WriteResult]:
        """Commit several requests' batches in one transaction, all or none, as if written one
        after the other (one sync to disk instead of one each): after an error nothing of them
        is committed, and the pipeline writes them again one at a time, so the failure is that
        request's alone."""
        ...

    def write_logs(self, rows: LogRows) -> int:
        """Commit GenAI log records, keyed by their span (``store.logs``), in one transaction."""
        ...


class Reader(Protocol):
    """What the read commands (``rollouts``, ``spans``) need."""

    url: str

    def open(self) -> None: ...

    def close(self) -> None: ...

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


class Ops(Protocol):
    """What operators and the store thread's spare time see: figures, state, damage, upkeep."""

    # Whether other processes write this store too (receivers sharing one database): their
    # commits wake no one here, so whoever waits for a change looks again now and then.
    shared: bool

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


class Served(Ingest, Ops, Protocol):
    """What the pipeline holds: it commits, scrapes the figures and lends its idle time."""


class Store(Ingest, Reader, Ops, Protocol):
    """Every store is all of these; the LightningStore API over it is made in ``wiring.py``
    (``store/lightning.py`` is that interface)."""
