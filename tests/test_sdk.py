"""rollout(), current_rollout() and emit_reward() on a real SDK provider: ids, nesting, errors,
decorators, concurrency and rewards."""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.trace import StatusCode

from lightning_otlp import current_rollout, emit_reward, rollout, semconv

from .traced import Traced, ids_of, traced

__all__ = ["traced"]  # the fixture the tests here take

RO = re.compile(r"^ro-[0-9a-f]{12}$")
AT = re.compile(r"^at-[0-9a-f]{8}$")


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
