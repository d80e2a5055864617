"""Cost per span of RolloutSpanProcessor against no processor and against BaggageSpanProcessor.

Each span is a start and an end on an SDK TracerProvider whose only other processor hands spans
to an exporter that does nothing. The providers differ only in the processor under test. Spans
start as children of one parent span, in a context holding both a rollout() binding and W3C
Baggage with the two ids, so both processors stamp the same two attributes. Short rounds are
interleaved so that the configurations share the machine's noise; each round is timed in CPU time
of the measuring thread (``time.thread_time``), so time spent waiting for a busy machine's cores
is not counted; and each configuration reports its fastest round (as timeit does: the slower
ones measure other processes, not this code), with the spread of its rounds beside it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.processor.baggage import BaggageSpanProcessor
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from bench.common import bar_chart, load
from lightning_otlp import RolloutSpanProcessor, rollout, semconv

SPANS_PER_ROUND = 2_000
ROUNDS = 60


class _NoopExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _provider(extra: SpanProcessor | None) -> TracerProvider:
    provider = TracerProvider()
    if extra is not None:
        provider.add_span_processor(extra)
    provider.add_span_processor(SimpleSpanProcessor(_NoopExporter()))
    return provider


def _agl_keys(key: str) -> bool:
    return key.startswith("agentlightning.")


def _round(provider: TracerProvider, n: int) -> float:
    """CPU seconds of this thread per span, for n spans started and ended in the caller's
    context."""
    tracer = provider.get_tracer("bench")
    start_span = tracer.start_span
    began = time.thread_time()
    for _ in range(n):
        start_span("s").end()
    return (time.thread_time() - began) / n


def _in_context(ctx: otel_context.Context, fn: Callable[[], float]) -> float:
    token = otel_context.attach(ctx)
    try:
        return fn()
    finally:
        otel_context.detach(token)


def measure(n: int = SPANS_PER_ROUND, rounds: int = ROUNDS) -> dict[str, list[float]]:
    """CPU seconds per span of each configuration, one sample a round, in round order."""
    providers = {
        "no processor": _provider(None),
        "RolloutSpanProcessor": _provider(RolloutSpanProcessor()),
        "BaggageSpanProcessor": _provider(BaggageSpanProcessor(_agl_keys)),
    }
    with rollout(propagate=True, tracer_provider=providers["no processor"]):
        both = otel_context.get_current()
    # The same parent span and Baggage, without the rollout() binding: a downstream service.
    only_baggage = trace.set_span_in_context(trace.get_current_span(both))
    only_baggage = baggage.set_baggage(semconv.ROLLOUT_ID, "ro-0123456789ab", only_baggage)
    only_baggage = baggage.set_baggage(semconv.ATTEMPT_ID, "at-01234567", only_baggage)
    empty = otel_context.Context()
    cases: dict[str, tuple[TracerProvider, Any]] = {
        "no processor": (providers["no processor"], both),
        "RolloutSpanProcessor": (providers["RolloutSpanProcessor"], both),
        "BaggageSpanProcessor": (providers["BaggageSpanProcessor"], both),
        # The downstream-service path: ids from Baggage only.
        "RolloutSpanProcessor, ids from Baggage": (providers["RolloutSpanProcessor"], only_baggage),
        # Outside any rollout: nothing to stamp.
        "RolloutSpanProcessor, no rollout": (providers["RolloutSpanProcessor"], empty),
        "no processor, no rollout": (providers["no processor"], empty),
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for provider, ctx in cases.values():  # warm-up
        _in_context(ctx, lambda p=provider: _round(p, n // 10))
    for _ in range(rounds):
        for name, (provider, ctx) in cases.items():
            samples[name].append(_in_context(ctx, lambda p=provider: _round(p, n)))
    for provider in providers.values():
        provider.shutdown()
    return samples


def main() -> None:
    samples = measure()
    results = {name: min(values) for name, values in samples.items()}
    base = results["no processor"]
    print(
        f"{SPANS_PER_ROUND} spans x {ROUNDS} interleaved rounds, CPU time of the measuring thread,"
        f" fastest round (spread: median and slowest over fastest); start + end, no-op exporter;"
        f" {load()}"
    )
    for name, seconds in results.items():
        median = statistics.median(samples[name]) / seconds
        slowest = max(samples[name]) / seconds
        print(
            f"  {name:<42} {seconds * 1e6:7.2f} us/span"
            f"   spread x{median:.2f} median, x{slowest:.2f} slowest"
        )
    added = {
        "rollout ids": results["RolloutSpanProcessor"] - base,
        "ids from Baggage": results["RolloutSpanProcessor, ids from Baggage"] - base,
        "no rollout": results["RolloutSpanProcessor, no rollout"]
        - results["no processor, no rollout"],
    }
    added_baggage = results["BaggageSpanProcessor"] - base
    for case, seconds in added.items():
        label = f"added by RolloutSpanProcessor ({case}):"
        print(f"  {label:<50} {seconds * 1e6:6.2f} us/span")
    print(f"  {'added by BaggageSpanProcessor:':<50} {added_baggage * 1e6:6.2f} us/span")
    added_rollout = added["rollout ids"]
    print(f"  RolloutSpanProcessor / no processor: {results['RolloutSpanProcessor'] / base:.2f}x")
    print(f"  BaggageSpanProcessor / no processor: {results['BaggageSpanProcessor'] / base:.2f}x")
    if added_baggage > 0:
        print(
            "  added cost, RolloutSpanProcessor / BaggageSpanProcessor: "
            f"{added_rollout / added_baggage:.2f}x (aim: <= 0.5x)"
        )
        # The same ratio from each round's own samples: how far one round could have swung it.
        per_round = [
            (r - b) / (g - b)
            for r, g, b in zip(
                samples["RolloutSpanProcessor"],
                samples["BaggageSpanProcessor"],
                samples["no processor"],
                strict=True,
            )
            if g > b
        ]
        if per_round:
            quartiles = statistics.quantiles(per_round, n=4) if len(per_round) > 1 else per_round
            print(
                f"  the same ratio round by round: median {statistics.median(per_round):.2f}x,"
                f" quartiles {quartiles[0]:.2f}x-{quartiles[-1]:.2f}x ({len(per_round)} rounds)"
            )
    bar_chart(
        "sdk-processor",
        "Cost a span adds to an SDK span (us of CPU, lower is better)",
        "us/span",
        {
            "lightning-otlp RolloutSpanProcessor": added_rollout * 1e6,
            "lightning-otlp, ids from Baggage": added["ids from Baggage"] * 1e6,
            "BaggageSpanProcessor": added_baggage * 1e6,
        },
        f"fastest of {ROUNDS} interleaved rounds; {load()}",
    )


if __name__ == "__main__":
    main()
