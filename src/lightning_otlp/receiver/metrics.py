"""Self-metrics in the Prometheus text format (0.0.4), named like the Collector's own.

Everything here is updated once per request, never per span.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

from ..store.base import Metric
from .changes import Changes

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
# Seconds; from a cached small request to a commit waiting on a busy disk.
LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
RECEIVER: Final = "otlp"


class Histogram:
    """Cumulative-on-render histogram; each instance is written by one thread only."""

    __slots__ = ("buckets", "counts", "total", "count")

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1


@dataclass(slots=True)
class Counters:
    """Totals since start, named after the Collector's own receiver metrics."""

    accepted_spans: dict[str, int] = field(default_factory=dict)
    refused_spans: dict[str, int] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)
    failed_requests: dict[str, int] = field(default_factory=dict)
    # Spans stored without a value the receiver could not use (a sequence id out of range...).
    dropped_values: dict[str, int] = field(default_factory=dict)

    def add(self, table: dict[str, int], transport: str, n: int) -> None:
        table[transport] = table.get(transport, 0) + n


class _MetricSource(Protocol):
    def metrics(self) -> list[Metric]: ...


class Measured(Protocol):
    """What ``/metrics`` reads of a pipeline (``receiver.pipeline.Pipeline``)."""

    counters: Counters
    request_seconds: dict[str, Histogram]
    commit_seconds: Histogram
    changes: Changes

    @property
    def in_flight(self) -> int: ...

    @property
    def store(self) -> _MetricSource: ...

    def ready(self) -> bool: ...


def render(pipeline: Measured) -> str:
    """The whole ``/metrics`` page for one pipeline."""
    counters = pipeline.counters
    out: list[str] = []
    transports = sorted({"grpc", "http", *counters.accepted_spans, *counters.refused_spans})
    _counter(
        out,
        "otelcol_receiver_accepted_spans",
        "Spans successfully stored.",
        {t: counters.accepted_spans.get(t, 0) for t in transports},
    )
    _counter(
        out,
        "otelcol_receiver_refused_spans",
        "Spans that could not be stored (rejected in partial_success or in a failed request).",
        {t: counters.refused_spans.get(t, 0) for t in transports},
    )
    _counter(
        out,
        "lightning_otlp_requests",
        "Trace export requests answered with success.",
        {t: counters.requests.get(t, 0) for t in transports},
    )
    _counter(
        out,
        "lightning_otlp_failed_requests",
        "Trace export requests answered with an error.",
        {t: counters.failed_requests.get(t, 0) for t in transports},
    )
    _counter(
        out,
        "lightning_otlp_dropped_values",
        "Spans stored without a value the receiver could not use (named in partial_success).",
        {t: counters.dropped_values.get(t, 0) for t in transports},
    )
    name = "lightning_otlp_request_duration_seconds"
    out.append(f"# HELP {name} Export request latency, receipt to answer, by transport.")
    out.append(f"# TYPE {name} histogram")
    for transport, hist in sorted(pipeline.request_seconds.items()):
        _histogram(out, name, hist, f'receiver="{RECEIVER}",transport="{transport}"')
    name = "lightning_otlp_store_commit_duration_seconds"
    out.append(f"# HELP {name} Time to commit one request's records to the store.")
    out.append(f"# TYPE {name} histogram")
    _histogram(out, name, pipeline.commit_seconds, "")
    _gauge(out, "lightning_otlp_requests_in_flight", "Requests queued for or in the store.",
           pipeline.in_flight)  # fmt: skip
    _gauge(out, "lightning_otlp_api_waits", "LightningStore API waits/rollouts calls waiting.",
           pipeline.changes.waiting)  # fmt: skip
    _gauge(out, "lightning_otlp_ready", "1 when the receiver is ready to store spans.",
           1 if pipeline.ready() else 0)  # fmt: skip
    for metric in pipeline.store.metrics():
        out.append(f"# HELP {metric.name} {metric.help}")
        out.append(f"# TYPE {metric.name} {metric.kind}")
        out.append(f"{metric.name} {_number(metric.value)}")
    return "\n".join(out) + "\n"


def _counter(out: list[str], name: str, help_text: str, by_transport: Mapping[str, int]) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} counter")
    for transport, value in by_transport.items():
        out.append(f'{name}{{receiver="{RECEIVER}",transport="{transport}"}} {value}')


def _gauge(out: list[str], name: str, help_text: str, value: float) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} gauge")
    out.append(f"{name} {_number(value)}")


def _histogram(out: list[str], name: str, hist: Histogram, labels: str) -> None:
    prefix = labels + "," if labels else ""
    cumulative = 0
    bounds: Iterable[str] = [*(_number(b) for b in hist.buckets), "+Inf"]
    for bound, count in zip(bounds, hist.counts, strict=True):
        cumulative += count
        out.append(f'{name}_bucket{{{prefix}le="{bound}"}} {cumulative}')
    suffix = f"{{{labels}}}" if labels else ""
    out.append(f"{name}_sum{suffix} {_number(hist.total)}")
    out.append(f"{name}_count{suffix} {hist.count}")


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)
