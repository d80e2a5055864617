"""The routed form of one request: what the receiver hands a store to commit in one transaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple

# Where a rollout came from: explicit ids, a rollout-key attribute, or the per-trace fallback.
Origin = Literal["explicit", "key", "trace"]

# (rollout_id, attempt_id or None for "the latest attempt")
Destination = tuple[str, "str | None"]


class SpanRow(NamedTuple):
    """A span as a store writes it, less its destination and sequence id (a tuple, so a store
    can splice it into its own row)."""

    trace_id: bytes
    span_id: bytes
    parent_id: bytes | None
    name: str
    start_time: float | None
    end_time: float | None
    status_code: str  # UNSET, OK or ERROR
    span: bytes  # the OTLP Span message's own bytes
    resource_id: str


# A span in its destination's group: ``(start, sequence_id, row)``, its start time (0.0 when it
# has none: spans are numbered in this order), an explicit ``agentlightning.span_sequence_id``
# kept as sent (or None), and its ``SpanRow``. A plain tuple, unpacked where it is read: a named
# tuple made per span costs routing a tenth of its time.
RoutedSpan = tuple[float, int | None, SpanRow]


class Outcome(NamedTuple):
    """An attempt's outcome a span reports."""

    status: str
    end_time: float | None


# The largest ``agentlightning.span_sequence_id`` kept as sent: every JSON reader holds it
# exactly, and an attempt's counter starting there stays far from SQLite's 64-bit limit.
MAX_SEQUENCE_ID: Final = 2**53 - 1


@dataclass(slots=True)
class RolloutInfo:
    """What a batch says about a rollout beyond its spans: origin, input, mode, status."""

    origin: Origin
    metadata: dict[str, Any] | None = None
    input: Any = None
    has_input: bool = False
    mode: str | None = None
    first_start: float | None = None
    trace_id: bytes | None = None  # for per-trace rollouts


@dataclass(slots=True)
class SpanBatch:
    """One request, routed: spans grouped by destination, ready for one store transaction."""

    # Each destination's spans.
    groups: dict[Destination, list[RoutedSpan]] = field(default_factory=dict)
    resources: dict[str, str] = field(default_factory=dict)
    rollouts: dict[str, RolloutInfo] = field(default_factory=dict)
    # Trace affinity: the first destination explicit ids give each trace in this request.
    bindings: dict[bytes, Destination] = field(default_factory=dict)
    # Attempt outcomes the spans report.
    outcomes: dict[Destination, Outcome] = field(default_factory=dict)
    # Outcomes of per-trace rollouts from their root spans (``finalize_on_root``): these only
    # apply while the rollout stays per-trace, not once its trace is bound elsewhere.
    root_outcomes: dict[Destination, Outcome] = field(default_factory=dict)
    # Primary rewards (``agentlightning.reward.0.value``) by destination, latest wins.
    rewards: dict[Destination, float] = field(default_factory=dict)
    # (trace_id, span_id) of the spans with a parent that are model calls, so their parents
    # enclose one (``records.mark_enclosing``): told while routing, off the store's one writer.
    calls: set[tuple[bytes, bytes]] = field(default_factory=set)
    received: int = 0
    accepted: int = 0
    rejected: int = 0
    reject_reasons: dict[str, int] = field(default_factory=dict)
    # Values the receiver could not use and left out, the span itself stored: reason -> spans.
    dropped: dict[str, int] = field(default_factory=dict)
    # Spans the store refused, reason -> spans: set anew by each write of the batch (a group
    # commit that fails is written again one request at a time).
    refused: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str, count: int = 1) -> None:
        self.rejected += count
        self.reject_reasons[reason] = self.reject_reasons.get(reason, 0) + count

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count

    def error_message(self) -> str:
        """Rejected spans and dropped values, for ``partial_success.error_message``."""
        reasons = [*self.reject_reasons.items(), *self.refused.items()]
        parts = [f"{n} span(s) {reason}" for reason, n in reasons]
        parts.extend(f"{n} span(s) stored without {what}" for what, n in self.dropped.items())
        return "; ".join(parts)
