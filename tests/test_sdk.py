"""RolloutSpanProcessor, rollout(), current_rollout() and emit_reward() on a real SDK provider."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagate import inject
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from lightning_otlp import RolloutSpanProcessor, current_rollout, emit_reward, rollout, semconv
from lightning_otlp.sdk.auto import RolloutInstrumentor

from .support import ROOT

RO = re.compile(r"^ro-[0-9a-f]{12}$")
AT = re.compile(r"^at-[0-9a-f]{8}$")


class Traced:
    """A provider with the processor and an in-memory exporter, as an agent would set it up."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.processor = RolloutSpanProcessor()
        self.provider = TracerProvider(shutdown_on_exit=False)
        self.provider.add_span_processor(self.processor)
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("test")

    def rollout(self, *args: Any, **kwargs: Any) -> rollout:
        return rollout(*args, tracer_provider=self.provider, **kwargs)

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        (span,) = self.named(name)
        return span


def ids_of(span: ReadableSpan) -> tuple[Any, Any]:
    attrs = span.attributes or {}
    return attrs.get(semconv.ROLLOUT_ID), attrs.get(semconv.ATTEMPT_ID)


@pytest.fixture
def traced() -> Iterator[Traced]:
    t = Traced()
    yield t
    t.provider.shutdown()


def test_spans_inside_a_rollout_carry_its_ids(traced: Traced) -> None:
    with traced.tracer.start_as_current_span("before"):
        pass
    with traced.rollout(input={"question": "2+2?"}, mode="train") as ids:
        assert current_rollout() == ids
        with traced.tracer.start_as_current_span("plan"):
            traced.tracer.start_span("call").end()
    with traced.tracer.start_as_current_span("after"):
        pass

    assert RO.match(ids.rollout_id) and AT.match(ids.attempt_id)
    assert current_rollout() is None
    for name in ("plan", "call", semconv.ROLLOUT_SPAN, semconv.ROLLOUT_START_SPAN):
        assert ids_of(traced.one(name)) == ids
    # Outside any rollout the processor leaves spans to the receiver's routing rules.
    assert ids_of(traced.one("before")) == (None, None)
    assert ids_of(traced.one("after")) == (None, None)

    block = traced.one(semconv.ROLLOUT_SPAN)
    attrs = block.attributes or {}
    assert attrs[semconv.ROLLOUT_INPUT] == '{"question":"2+2?"}'
    assert attrs[semconv.ROLLOUT_MODE] == "train"
    assert block.status.status_code is StatusCode.UNSET
    plan = traced.one("plan")
    assert plan.parent is not None and plan.parent.span_id == block.context.span_id
    assert plan.context.trace_id == block.context.trace_id


def test_start_marker_is_exported_as_the_block_starts(traced: Traced) -> None:
    with traced.rollout() as ids:
        # Already finished (so already handed to exporters) while the block is still open.
        marker = traced.one(semconv.ROLLOUT_START_SPAN)
        assert traced.named(semconv.ROLLOUT_SPAN) == []
    block = traced.one(semconv.ROLLOUT_SPAN)
    assert ids_of(marker) == ids
    assert marker.start_time == marker.end_time
    assert marker.parent is not None and marker.parent.span_id == block.context.span_id
    assert set(marker.attributes or {}) == {semconv.ROLLOUT_ID, semconv.ATTEMPT_ID}


def test_given_ids_are_used_and_missing_ones_generated(traced: Traced) -> None:
    with traced.rollout("ro-0123456789ab", "at-01234567") as ids:
        traced.tracer.start_span("a").end()
    with traced.rollout("ro-0123456789ab") as retry:
        traced.tracer.start_span("b").end()
    assert ids == ("ro-0123456789ab", "at-01234567")
    assert ids_of(traced.one("a")) == ids
    assert retry.rollout_id == "ro-0123456789ab" and AT.match(retry.attempt_id)
    assert retry.attempt_id != ids.attempt_id
    assert ids_of(traced.one("b")) == retry


def test_rollouts_nest_inner_wins_and_outer_is_restored(traced: Traced) -> None:
    with traced.rollout() as outer:
        traced.tracer.start_span("outer.1").end()
        with traced.rollout() as inner:
            assert current_rollout() == inner
            traced.tracer.start_span("inner").end()
        assert current_rollout() == outer
        traced.tracer.start_span("outer.2").end()
    assert current_rollout() is None
    assert outer.rollout_id != inner.rollout_id
    assert ids_of(traced.one("outer.1")) == outer
    assert ids_of(traced.one("outer.2")) == outer
    assert ids_of(traced.one("inner")) == inner


def test_exception_marks_the_rollout_span_error_and_restores_ids(traced: Traced) -> None:
    with traced.rollout() as outer:
        with pytest.raises(KeyError):
            with traced.rollout() as failing:
                traced.tracer.start_span("doomed").end()
                raise KeyError("tool")
        assert current_rollout() == outer
    assert current_rollout() is None
    spans = {ids_of(s): s for s in traced.named(semconv.ROLLOUT_SPAN)}
    failed = spans[failing]
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "KeyError: 'tool'"
    assert [e.name for e in failed.events] == ["exception"]
    assert spans[outer].status.status_code is StatusCode.UNSET
    assert ids_of(traced.one("doomed")) == failing


def test_decorator_on_sync_function_opens_a_rollout_per_call(traced: Traced) -> None:
    @traced.rollout(input="task", mode="val")
    def solve(x: int) -> tuple[int, Any]:
        """Solve it."""
        traced.tracer.start_span("step").end()
        return x * 2, current_rollout()

    (a, ids_a), (b, ids_b) = solve(1), solve(2)
    assert (a, b) == (2, 4)
    assert ids_a is not None and ids_b is not None and ids_a != ids_b
    assert solve.__name__ == "solve" and solve.__doc__ == "Solve it."
    assert sorted(ids_of(s) for s in traced.named("step")) == sorted([ids_a, ids_b])
    assert current_rollout() is None
    for span in traced.named(semconv.ROLLOUT_SPAN):
        assert (span.attributes or {})[semconv.ROLLOUT_MODE] == "val"


def test_decorator_on_async_function_and_async_with(traced: Traced) -> None:
    @traced.rollout()
    async def solve(x: int) -> Any:
        await asyncio.sleep(0)
        traced.tracer.start_span(f"step.{x}").end()
        await asyncio.sleep(0)
        return current_rollout()

    async def main() -> tuple[list[Any], Any]:
        results = await asyncio.gather(*(solve(i) for i in range(5)))
        async with traced.rollout() as ids:
            traced.tracer.start_span("in.async.with").end()
            assert current_rollout() == ids
        assert current_rollout() is None
        return list(results), ids

    results, ids = asyncio.run(main())
    assert len(set(results)) == 5 and None not in results
    for i, expected in enumerate(results):
        assert ids_of(traced.one(f"step.{i}")) == expected
    assert ids_of(traced.one("in.async.with")) == ids


def test_async_decorator_error_marks_the_span(traced: Traced) -> None:
    @traced.rollout()
    async def fail() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        asyncio.run(fail())
    span = traced.one(semconv.ROLLOUT_SPAN)
    assert span.status.status_code is StatusCode.ERROR


def test_concurrent_tasks_and_threads_never_cross(traced: Traced) -> None:
    def check(expected: Any) -> None:
        assert current_rollout() == expected

    async def task(i: int) -> None:
        async with traced.rollout() as ids:
            for _ in range(3):
                with traced.tracer.start_as_current_span("task", attributes={"want": ids[0]}):
                    await asyncio.sleep(0)
                    check(ids)

    async def tasks() -> None:
        await asyncio.gather(*(task(i) for i in range(50)))

    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def thread() -> None:
        try:
            with traced.rollout() as ids:
                barrier.wait(10)
                for _ in range(3):
                    with traced.tracer.start_as_current_span("thread", attributes={"want": ids[0]}):
                        check(ids)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=thread) for _ in range(8)]
    for t in threads:
        t.start()
    asyncio.run(tasks())
    for t in threads:
        t.join()
    assert errors == []
    work = traced.named("task") + traced.named("thread")
    assert len(work) == 58 * 3
    for span in work:
        assert ids_of(span)[0] == (span.attributes or {})["want"]
    assert len({ids_of(s) for s in work}) == 58


def test_one_rollout_object_entered_by_many_threads_and_tasks(traced: Traced) -> None:
    """A shared instance (a decorator is one) closes each caller's own block."""
    shared = traced.rollout(mode="train")
    seen: list[Any] = []
    barrier = threading.Barrier(4)

    def thread(i: int) -> None:
        with shared as ids:
            barrier.wait(10)  # all four blocks open at once
            traced.tracer.start_span(f"thread.{i}").end()
            seen.append((current_rollout() == ids, ids))
        seen.append((current_rollout() is None, None))

    async def task(i: int) -> None:
        async with shared as ids:
            await asyncio.sleep(0.001 * (3 - i))  # close in another order than opened
            traced.tracer.start_span(f"task.{i}").end()
            seen.append((current_rollout() == ids, ids))

    async def tasks() -> None:
        await asyncio.gather(*(task(i) for i in range(4)))

    threads = [threading.Thread(target=thread, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    asyncio.run(tasks())
    assert all(ok for ok, _ in seen) and len(seen) == 12
    rollouts = [ids for _, ids in seen if ids is not None]
    assert len(set(rollouts)) == 8
    for i in range(4):
        assert ids_of(traced.one(f"thread.{i}")) in rollouts
        assert ids_of(traced.one(f"task.{i}")) in rollouts
    assert len(traced.named(semconv.ROLLOUT_SPAN)) == 8


def test_rollout_works_without_an_sdk_provider() -> None:
    with rollout(tracer_provider=trace.NoOpTracerProvider()) as ids:
        assert current_rollout() == ids
        emit_reward(1.0, tracer_provider=trace.NoOpTracerProvider())
    assert current_rollout() is None


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


def test_bad_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError, match="mode"):
        rollout(mode="training")
    with pytest.raises(ValueError, match="JSON"):
        rollout(input={"f": object()})
    with pytest.raises(ValueError, match="rollout_id"):
        rollout("")
    with pytest.raises(ValueError, match="attempt_id"):
        rollout(attempt_id=7)  # type: ignore[arg-type]


def test_emit_reward_uses_agent_lightnings_layout(traced: Traced) -> None:
    with traced.rollout() as ids:
        single = emit_reward(1, tracer_provider=traced.provider)
        multi = emit_reward(
            {"efficiency": 0.25, "task_completion": True, "style": 0.5},
            primary_key="task_completion",
            tracer_provider=traced.provider,
        )
    outside = emit_reward(0.5, tracer_provider=traced.provider)
    assert single == {
        "agentlightning.reward.0.name": "primary",
        "agentlightning.reward.0.value": 1.0,
        semconv.ROLLOUT_ID: ids.rollout_id,
        semconv.ATTEMPT_ID: ids.attempt_id,
    }
    assert [(k, v) for k, v in multi.items() if k.startswith("agentlightning.reward")] == [
        ("agentlightning.reward.0.name", "task_completion"),
        ("agentlightning.reward.0.value", 1.0),
        ("agentlightning.reward.1.name", "efficiency"),
        ("agentlightning.reward.1.value", 0.25),
        ("agentlightning.reward.2.name", "style"),
        ("agentlightning.reward.2.value", 0.5),
    ]
    assert semconv.ROLLOUT_ID not in outside
    spans = traced.named(semconv.ANNOTATION_SPAN)
    assert [dict(s.attributes or {}) for s in spans] == [single, multi, outside]
    assert all(s.status.status_code is StatusCode.OK for s in spans)


def test_emit_reward_rejects_what_agent_lightning_rejects() -> None:
    with pytest.raises(ValueError, match="primary_key"):
        emit_reward({"a": 1.0})
    with pytest.raises(ValueError, match="not in"):
        emit_reward({"a": 1.0}, primary_key="b")
    with pytest.raises(ValueError, match="number"):
        emit_reward({"a": "high"}, primary_key="a")  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        emit_reward("1.0")  # type: ignore[arg-type]


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
