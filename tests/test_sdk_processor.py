"""RolloutSpanProcessor on a real SDK provider: stamping as the SDK's own path does, ids from
W3C Baggage and into it, never raising, shutdown, the instrumentor, and the docs' examples."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagate import inject
from opentelemetry.sdk.trace import Span, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lightning_otlp import RolloutSpanProcessor, rollout, semconv
from lightning_otlp.sdk.auto import RolloutInstrumentor

from .support import ROOT
from .traced import Traced, ids_of, traced

__all__ = ["traced"]  # the fixture the tests here take


def test_ids_a_caller_set_are_kept(traced: Traced) -> None:
    with traced.rollout():
        start = traced.tracer.start_span
        start("explicit", attributes={semconv.ROLLOUT_ID: "ro-aaaaaaaaaaaa"}).end()
        start("only.attempt", attributes={semconv.ATTEMPT_ID: "at-bbbbbbbb"}).end()
    assert ids_of(traced.one("explicit")) == ("ro-aaaaaaaaaaaa", None)
    assert ids_of(traced.one("only.attempt")) == (None, "at-bbbbbbbb")


class _SdkStamp(SpanProcessor):
    """The SDK's own way to add the ids, for comparison."""

    def __init__(self, stamp: dict[str, str]) -> None:
        self.stamp = stamp

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        span.set_attributes(self.stamp)


@pytest.mark.parametrize(
    "limits",
    [
        SpanLimits(),
        SpanLimits(max_span_attributes=4),  # full: the SDK drops the oldest
        SpanLimits(max_attribute_length=6),  # the SDK cuts the ids short
        SpanLimits(max_span_attributes=0),
    ],
    ids=["default", "count-limit", "length-limit", "no-attributes"],
)
def test_stamped_attributes_are_what_the_sdks_own_path_stores(limits: SpanLimits) -> None:
    """However the ids get onto a span, its attributes and dropped count match set_attributes."""
    start_attrs: dict[str, Any] = {"a": "x", "b": 1, "c": [1, 2], "d": True}
    results = []
    for make in (RolloutSpanProcessor, None):
        exporter = InMemorySpanExporter()
        provider = TracerProvider(span_limits=limits, shutdown_on_exit=False)
        with rollout(
            rollout_id="ro-0123456789ab", attempt_id="at-01234567", tracer_provider=provider
        ) as ids:
            stamp = {semconv.ROLLOUT_ID: ids.rollout_id, semconv.ATTEMPT_ID: ids.attempt_id}
            provider.add_span_processor(make() if make else _SdkStamp(stamp))
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            tracer = provider.get_tracer("test")
            tracer.start_span("with", attributes=start_attrs).end()
            tracer.start_span("without").end()
        provider.shutdown()
        results.append(
            [
                (s.name, list((s.attributes or {}).items()), s.dropped_attributes)
                for s in exporter.get_finished_spans()
            ]
        )
    assert results[0] == results[1]
    assert {"with", "without"} <= {name for name, _, _ in results[0]}


def test_ids_from_w3c_baggage_of_the_parent_context(traced: Traced) -> None:
    """A service called from inside a rollout joins it with no code of its own."""
    header = "agentlightning.rollout_id=ro-0123456789ab,agentlightning.attempt_id=at-89abcdef"
    both = W3CBaggagePropagator().extract({"baggage": header})
    traced.tracer.start_span("server", context=both).end()
    token = otel_context.attach(both)
    try:
        with traced.tracer.start_as_current_span("handler"):
            traced.tracer.start_span("child").end()
    finally:
        otel_context.detach(token)
    only_rollout = baggage.set_baggage(semconv.ROLLOUT_ID, "ro-fedcba987654")
    traced.tracer.start_span("latest.attempt", context=only_rollout).end()
    unrelated = baggage.set_baggage("user.id", "42")
    traced.tracer.start_span("unrelated", context=unrelated).end()

    for name in ("server", "handler", "child"):
        assert ids_of(traced.one(name)) == ("ro-0123456789ab", "at-89abcdef")
    assert ids_of(traced.one("latest.attempt")) == ("ro-fedcba987654", None)
    assert ids_of(traced.one("unrelated")) == (None, None)
    # A rollout() block wins over Baggage.
    token = otel_context.attach(both)
    try:
        with traced.rollout() as ids:
            traced.tracer.start_span("block").end()
    finally:
        otel_context.detach(token)
    assert ids_of(traced.one("block")) == ids


def test_propagate_puts_the_ids_in_outgoing_baggage(traced: Traced) -> None:
    def outgoing() -> str:
        carrier: dict[str, str] = {}
        inject(carrier)
        return carrier.get("baggage", "")

    with traced.rollout() as quiet:
        assert outgoing() == ""
    with traced.rollout(propagate=True) as outer:
        header = outgoing()
        assert f"agentlightning.rollout_id={outer.rollout_id}" in header
        assert f"agentlightning.attempt_id={outer.attempt_id}" in header
        with traced.rollout():
            # An inner block that does not propagate must not send the outer ids downstream.
            assert "agentlightning" not in outgoing()
        with traced.rollout(propagate=True) as inner:
            assert f"agentlightning.rollout_id={inner.rollout_id}" in outgoing()
        assert outgoing() == header
    assert outgoing() == ""
    assert quiet != outer


def test_processor_never_raises(traced: Traced, caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        _attributes: dict[str, Any] = {}

        def set_attributes(self, attributes: Any) -> None:
            raise RuntimeError("span is broken")

    processor = RolloutSpanProcessor()
    with traced.rollout(), caplog.at_level(logging.DEBUG, "lightning_otlp.sdk"):
        processor.on_start(Broken())  # type: ignore[arg-type]
        processor.on_start(Broken())  # type: ignore[arg-type]
        processor.on_start(object())  # type: ignore[arg-type]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "could not stamp" in warnings[0].getMessage()
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) == 2


def test_shutdown_stops_stamping_and_a_second_one_warns(caplog: pytest.LogCaptureFixture) -> None:
    traced = Traced()
    traced.processor.shutdown()
    with traced.rollout():
        traced.tracer.start_span("late").end()
    assert ids_of(traced.one("late")) == (None, None)
    with caplog.at_level(logging.WARNING, "lightning_otlp.sdk"):
        traced.processor.shutdown()
    assert "more than once" in caplog.text
    assert traced.processor.force_flush() is True


def test_instrumentor_adds_the_processor_to_an_sdk_provider() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = RolloutInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        with rollout(tracer_provider=provider) as ids:
            provider.get_tracer("t").start_span("stamped").end()
    finally:
        instrumentor.uninstrument()
    with rollout(tracer_provider=provider):
        provider.get_tracer("t").start_span("after.uninstrument").end()
    by_name = {s.name: s for s in exporter.get_finished_spans()}
    assert ids_of(by_name["stamped"]) == ids
    assert ids_of(by_name["after.uninstrument"]) == (None, None)


def test_instrumentor_without_an_sdk_provider_only_warns(caplog: pytest.LogCaptureFixture) -> None:
    instrumentor = RolloutInstrumentor()
    with caplog.at_level(logging.WARNING, "lightning_otlp.sdk.auto"):
        instrumentor.instrument(tracer_provider=trace.NoOpTracerProvider())
    instrumentor.uninstrument()
    assert "no OpenTelemetry SDK TracerProvider" in caplog.text


@pytest.mark.parametrize(
    ("example", "page", "snippet"),
    [
        ("processor_in_code.py", "agents/python.md", "processor-in-code.sh"),
        ("zero_code_agent.py", "agents/zero-code.md", "zero-code.sh"),
        ("resource_attributes_agent.py", "agents/index.md", "resource-attributes.sh"),
    ],
)
def test_docs_show_the_examples_the_end_to_end_tests_run(
    example: str, page: str, snippet: str
) -> None:
    text = (ROOT / "docs" / page).read_text()
    assert f'--8<-- "examples/{example}"' in text
    assert f'--8<-- "docs/snippets/{snippet}"' in text
    assert f"python examples/{example}" in (ROOT / "docs" / "snippets" / snippet).read_text()
