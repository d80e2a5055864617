"""Trace affinity: which rollout each trace belongs to once explicit ids have named it.

Kept in memory, not in a table: a durable per-trace row would cost a random index write for
every trace on the ingest path. The state is rebuilt at start-up from the newest rows the
store already has (spans of explicit rollouts, recent per-trace rollouts), so a restart keeps
the bindings of the traces still in flight.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field

from ..batch import Destination
from ..defaults import DEFAULT_AFFINITY_WINDOW, DEFAULT_MAX_TRACES

log = logging.getLogger("lightning_otlp.affinity")


@dataclass(slots=True)
class AffinityCounters:
    moved_spans: int = 0
    moved_traces: int = 0
    late_bindings: int = 0
    ignored_outcomes: int = 0


@dataclass(slots=True)
class Changes:
    """Memory updates that take effect only once their transaction commits."""

    bound: list[tuple[bytes, Destination]] = field(default_factory=list)
    autos: list[tuple[bytes, str, float]] = field(default_factory=list)
    moved: list[bytes] = field(default_factory=list)
    moved_spans: int = 0
    late: int = 0
    # Outcomes spans claimed for attempts or rollouts already finished: ignored, counted.
    ignored_outcomes: int = 0


class TraceAffinity:
    """Bindings (trace -> rollout and attempt) and the per-trace rollouts that may still move.

    Args:
        window: seconds after a per-trace rollout is created during which a binding for its
            trace moves its spans; a later binding leaves them (logged and counted).
        max_traces: traces remembered in each map; the oldest are forgotten first.
    """

    def __init__(
        self, window: float = DEFAULT_AFFINITY_WINDOW, max_traces: int = DEFAULT_MAX_TRACES
    ) -> None:
        if window < 0:
            raise ValueError("affinity window must not be negative")
        if max_traces < 1:
            raise ValueError("max_traces must be positive")
        self.window = window
        self.max_traces = max_traces
        # Ordered dicts: forgetting the oldest entry is O(1) (a plain dict rescans the holes
        # its deletions leave at the front, which turns a full map quadratic).
        self.bindings: OrderedDict[bytes, Destination] = OrderedDict()
        # trace id -> (per-trace rollout id, created at); insertion order is age order.
        self.autos: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self.counters = AffinityCounters()

    def holding(self, now: float) -> bool:
        """Whether any per-trace rollout is young enough that a binding could still move it."""
        autos = self.autos
        return bool(autos) and now - next(reversed(autos.values()))[1] <= self.window

    def bound(self, trace_id: bytes) -> Destination | None:
        return self.bindings.get(trace_id)

    def movable(self, trace_id: bytes, now: float, changes: Changes) -> str | None:
        """The per-trace rollout a new binding should empty, if still inside the window."""
        auto = self.autos.get(trace_id)
        if auto is None:
            return None
        rollout_id, created = auto
        if now - created <= self.window:
            return rollout_id
        changes.late += 1
        log.warning(
            "trace %s was bound %.0f s after its spans went to %s (window %.0f s): not moved",
            trace_id.hex(),
            now - created,
            rollout_id,
            self.window,
        )
        return None

    def apply(self, changes: Changes, now: float) -> None:
        bindings = self.bindings
        for trace_id, dest in changes.bound:
            bindings.setdefault(trace_id, dest)
        for trace_id, rollout_id, created in changes.autos:
            self.autos[trace_id] = (rollout_id, created)
        for trace_id in changes.moved:
            self.autos.pop(trace_id, None)
        self.count(changes)
        self._trim(now)

    def count(self, changes: Changes) -> None:
        """Add a committed transaction's moves and ignored claims to the counters."""
        self.counters.moved_traces += len(changes.moved)
        self.counters.moved_spans += changes.moved_spans
        self.counters.late_bindings += changes.late
        self.counters.ignored_outcomes += changes.ignored_outcomes

    def _trim(self, now: float) -> None:
        bindings = self.bindings
        while len(bindings) > self.max_traces:
            bindings.popitem(last=False)
        autos = self.autos
        # Per-trace rollouts are remembered past the window so that late bindings are told.
        horizon = now - self.window - max(self.window, 60.0)
        while autos and (len(autos) > self.max_traces or next(iter(autos.values()))[1] < horizon):
            autos.popitem(last=False)
