"""The LightningStore API a backend offers the REST layer (agentlightning 0.3.0 semantics).

Records go in and out as plain dicts with agentlightning's field names, so the API layer never
imports agentlightning and a second backend (PostgreSQL, say) only has to implement this.
Methods are synchronous: the receiver runs writes on a thread of their own, beside OTLP commits,
and reads on read threads when the store has read connections (``reads_apart``).
Errors: ``NotFound`` (``errors.py``) for a rollout or attempt that does not exist; anything else
a backend raises is a defect, answered 500.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from ..errors import NotFound as NotFound  # the class lives in the one error tree

Record = dict[str, Any]
SortOrder = Literal["asc", "desc"]
FilterLogic = Literal["and", "or"]

ROLLOUT_STATUSES: Final = (
    "queuing",
    "preparing",
    "running",
    "failed",
    "succeeded",
    "cancelled",
    "requeuing",
)
ATTEMPT_STATUSES: Final = ("preparing", "running", "failed", "succeeded", "unresponsive", "timeout")
WORKER_STATUSES: Final = ("idle", "busy", "unknown")
MODES: Final = ("train", "val", "test")


class ScanNeeded(Exception):
    """A read on a read thread met an attempt past its deadline: the watchdog must write first,
    so the call runs again on the write thread."""


class Unset:
    """A field the caller did not send (distinct from an explicit ``null``)."""

    _instance: Unset | None = None

    def __new__(cls) -> Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = Unset()


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a query: ``{items, limit, offset, total}`` on the wire."""

    items: Sequence[Record | bytes]  # bytes: a record already encoded as JSON (``encoded``)
    limit: int
    offset: int
    total: int

    def as_dict(self) -> Record:
        return {
            "items": self.items,
            "limit": self.limit,
            "offset": self.offset,
            "total": self.total,
        }


@dataclass(frozen=True, slots=True)
class SpanOrder:
    """A read of a rollout's (or attempt's) spans, to be sent a slice at a time: the first
    slice's records, and where the rest are. A read of any size holds one slice of records and
    eight bytes for each span after it, and sends the spans that were there when it began."""

    first: list[Record | bytes]  # bytes: a record already encoded as JSON
    rest: Sequence[int]  # the rowids of the spans after the first slice, in order
    total: int  # the spans the query matched, those before the offset included


@dataclass(frozen=True, slots=True)
class Query:
    """Sorting and pagination shared by every list call."""

    sort_by: str | None = None
    sort_order: SortOrder = "asc"
    limit: int = -1
    offset: int = 0


class LightningStoreBackend(Protocol):
    """What ``/v1/agl`` needs from a store; see agentlightning 0.3.0 ``store/base.py``."""

    def statistics(self) -> Record: ...

    def start_rollout(
        self,
        input: Any,
        mode: str | None,
        resources_id: str | None,
        config: Record | None,
        metadata: Record | None,
        worker_id: str | None,
    ) -> Record: ...

    def enqueue_rollouts(self, requests: Sequence[Record]) -> list[Record]: ...

    def dequeue_rollouts(self, limit: int, worker_id: str | None) -> list[Record]: ...

    def start_attempt(self, rollout_id: str, worker_id: str | None) -> Record: ...

    def query_rollouts(
        self,
        *,
        status_in: Sequence[str] | None,
        rollout_id_in: Sequence[str] | None,
        rollout_id_contains: str | None,
        filter_logic: FilterLogic,
        query: Query,
    ) -> Page: ...

    def get_rollout(self, rollout_id: str) -> Record | None: ...

    def update_rollout(self, rollout_id: str, fields: Record) -> Record: ...

    def query_attempts(self, rollout_id: str, query: Query) -> Page: ...

    def get_latest_attempt(self, rollout_id: str) -> Record | None: ...

    def update_attempt(self, rollout_id: str, attempt_id: str, fields: Record) -> Record: ...

    def query_workers(
        self,
        *,
        status_in: Sequence[str] | None,
        worker_id_contains: str | None,
        filter_logic: FilterLogic,
        query: Query,
    ) -> Page: ...

    def get_worker(self, worker_id: str) -> Record | None: ...

    def update_worker(self, worker_id: str, heartbeat_stats: Record | Unset) -> Record: ...

    def add_resources(self, resources: Record) -> Record: ...

    def update_resources(self, resources_id: str, resources: Record) -> Record: ...

    def get_resources(self, resources_id: str) -> Record | None: ...

    def get_latest_resources(self) -> Record | None: ...

    def query_resources(
        self, *, resources_id: str | None, resources_id_contains: str | None, query: Query
    ) -> Page: ...

    def add_span(self, span: Record) -> Record | None: ...

    def next_span_sequence_id(self, rollout_id: str, attempt_id: str) -> int: ...

    def query_spans(
        self,
        rollout_id: str,
        attempt_id: str | None,
        *,
        filters: dict[str, dict[str, str]],
        filter_logic: FilterLogic,
        query: Query,
        encoded: bool = False,
    ) -> Page:
        """With ``encoded``, items may be JSON bytes ready to send (faster than dicts)."""
        ...

    def span_order(
        self, rollout_id: str, attempt_id: str | None, query: Query, first: int
    ) -> SpanOrder:
        """Every span past ``query.offset`` in its order (arrival, or sequence with
        ``sort_by``): the records of the first ``first``, the places of the others."""
        ...

    def spans_at(self, rowids: Sequence[int]) -> list[Record | bytes]:
        """The records of these spans (of ``span_order``), in this order; JSON bytes where
        they can be."""
        ...

    def finished_rollouts(self, rollout_ids: Sequence[str]) -> list[Record]:
        """The rollouts among ``rollout_ids`` that have finished, in the order asked."""
        ...

    # Reads apart from the writers, on read connections of their own.

    def reads_apart(self) -> bool:
        """Whether reads may run on other threads (``reading``) while writes go on."""
        ...

    def reading(self) -> AbstractContextManager[None]:
        """Calls inside run as reads on this thread's own read connection."""
        ...

    def scan_due(self) -> bool:
        """Whether the watchdog scan is due (a read on a reader does not run it)."""
        ...

    def watch(self) -> None:
        """Run the watchdog scan if due (on the write thread), before a read elsewhere."""
        ...

    def close_readers(self) -> None: ...
