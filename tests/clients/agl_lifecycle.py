"""The conformance suite's lifecycle scenarios (run by ``agl_conformance.py``): the watchdog's
timeouts, retries and lost workers, and sequence ids from every path and past deadlines.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from agentlightning.types import LLM, RolloutConfig
from agl_client import Recorder, connect, span
from opentelemetry.sdk.trace import TracerProvider


async def watchdog(url: str) -> list[list[Any]]:
    """Timeouts, unresponsive attempts, retries and a lost worker's late span, after the
    watchdog's 10 s debounce has surely passed on both servers."""
    client = connect(url)
    rec = Recorder()
    try:
        await client.add_resources({"main_llm": LLM(endpoint="http://llm:8000/v1", model="m")})
        quiet = RolloutConfig(
            unresponsive_seconds=1, max_attempts=2, retry_condition=["unresponsive"]
        )
        slow = RolloutConfig(timeout_seconds=1, max_attempts=3, retry_condition=["failed"])
        r1 = await client.enqueue_rollout({"n": 1}, config=quiet)
        r2 = await client.enqueue_rollout({"n": 2}, config=slow)
        d1 = await client.dequeue_rollout(worker_id="wa")
        d2 = await client.dequeue_rollout(worker_id="wb")
        assert d1 is not None and d2 is not None
        rec(
            "heartbeat_span",
            await client.add_span(span(r2.rollout_id, d2.attempt.attempt_id, 1, "s", 1)),
        )
        rec("running", await client.query_rollouts())
        await asyncio.sleep(11.5)
        rec("after_watchdog", await client.query_rollouts())
        rec("attempts_r1", await client.query_attempts(r1.rollout_id))
        rec("attempts_r2", await client.query_attempts(r2.rollout_id))
        rec("workers", await client.query_workers(sort_by="worker_id"))
        d3 = rec("dequeue_retry", await client.dequeue_rollout(worker_id="wc"))
        assert d3 is not None
        late = span(r1.rollout_id, d1.attempt.attempt_id, 1, "late", 2)
        rec("late_span", await client.add_span(late))
        rec("after_late_span", await client.query_attempts(r1.rollout_id))
        rec("rollout_after_late_span", await client.get_rollout_by_id(r1.rollout_id))
        rec(
            "retry_succeeded",
            await client.update_attempt(r1.rollout_id, "latest", status="succeeded"),
        )
        rec("final", await client.query_rollouts())
        rec("final_workers", await client.query_workers(sort_by="worker_id"))
    finally:
        await client.close()
    return rec.steps


async def sequence(url: str) -> list[list[Any]]:
    """Sequence ids from every path (``spans/next``, ``add_span``, ``add_otel_span``, OTLP),
    concurrent writers, ``limit=0``, and the watchdog's deadlines as the next query sees them."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    client = connect(url)
    rec = Recorder()
    try:
        started = await client.start_rollout({"seq": 1})
        rollout_id, attempt_id = started.rollout_id, started.attempt.attempt_id
        issued = [await client.get_next_span_sequence_id(rollout_id, attempt_id) for _ in range(3)]
        rec("issued", issued)
        added = await client.add_span(span(rollout_id, attempt_id, issued[0], "issued", 1))
        rec("add_span_issued", added.sequence_id if added else None)
        explicit = await client.add_span(span(rollout_id, attempt_id, 101, "explicit", 2))
        rec("add_span_explicit", explicit.sequence_id if explicit else None)
        rec("issued_after_explicit", await client.get_next_span_sequence_id(rollout_id, attempt_id))
        tracer = TracerProvider().get_tracer("conformance")
        otel = tracer.start_span("otel")
        otel.end()
        rec(
            "add_otel_span",
            (await client.add_otel_span(rollout_id, attempt_id, otel)).sequence_id,  # type: ignore[arg-type, union-attr]
        )
        otel_explicit = tracer.start_span("otel-explicit")
        otel_explicit.end()
        given = await client.add_otel_span(rollout_id, attempt_id, otel_explicit, sequence_id=7)  # type: ignore[arg-type]
        rec("add_otel_span_explicit", given.sequence_id if given else None)

        # OTLP: one request per span, as the SDK's simple processor sends them; the last
        # request holds two spans, the second of which started before every other.
        provider = TracerProvider(
            resource=Resource.create(
                {"agentlightning.rollout_id": rollout_id, "agentlightning.attempt_id": attempt_id}
            )
        )
        exporter = OTLPSpanExporter(client.otlp_traces_endpoint())
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        otlp = provider.get_tracer("conformance")
        early = otlp.start_span("otlp-early", start_time=time.time_ns() - 10**9)
        for name in ("otlp-1", "otlp-2"):
            otlp.start_span(name).end()
        with otlp.start_as_current_span("otlp-explicit") as marked:
            marked.set_attribute("agentlightning.span_sequence_id", 55)
        early.end()
        provider.shutdown()
        rec("issued_after_otlp", await client.get_next_span_sequence_id(rollout_id, attempt_id))

        # Writers at once: every span stored, each with its own sequence id.
        def otel_span(n: int) -> Any:
            made = tracer.start_span(f"concurrent-{n}")
            made.end()
            return made

        together = await asyncio.gather(
            *(client.add_otel_span(rollout_id, attempt_id, otel_span(n)) for n in range(20))
        )
        rec("concurrent", sorted(s.sequence_id for s in together if s is not None))
        deadline = time.monotonic() + 10
        while True:  # OTLP is acknowledged on commit, but be patient with a loaded machine
            spans = await client.query_spans(rollout_id)
            if len(spans) >= 28 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        rec("spans", [[s.name, s.sequence_id] for s in spans])

        # limit=0: an empty page that still counts.
        for step, call in (
            ("rollouts_limit_0", client.query_rollouts(limit=0)),
            ("attempts_limit_0", client.query_attempts(rollout_id, limit=0)),
            ("spans_limit_0", client.query_spans(rollout_id, limit=0)),
        ):
            try:
                page = await call
            except aiohttp.ClientResponseError as exc:
                rec(step, {"status": exc.status})
            else:
                rec(step, {"items": len(page), "total": page.total})

        # Deadlines: past them, the very next query sees the attempt timed out / unresponsive.
        slow = await client.enqueue_rollout(
            {"deadline": "timeout"},
            config=RolloutConfig(timeout_seconds=0.2, max_attempts=2, retry_condition=["timeout"]),
        )
        quiet = await client.enqueue_rollout(
            {"deadline": "unresponsive"}, config=RolloutConfig(unresponsive_seconds=0.2)
        )
        for _ in range(2):
            got = await client.dequeue_rollout(worker_id="wd")
            assert got is not None
            await client.add_otel_span(got.rollout_id, got.attempt.attempt_id, otel_span(99))
        rec(
            "deadline_running",
            [
                r.status
                for r in await client.query_rollouts(
                    rollout_id_in=[slow.rollout_id, quiet.rollout_id]
                )
            ],
        )
        await asyncio.sleep(0.5)
        rec("timeout_attempts", [a.status for a in await client.query_attempts(slow.rollout_id)])
        rec("timeout_rollout", (await client.get_rollout_by_id(slow.rollout_id)).status)  # type: ignore[union-attr]
        rec("unresponsive_attempt", (await client.get_latest_attempt(quiet.rollout_id)).status)  # type: ignore[union-attr]
        rec("unresponsive_rollout", (await client.get_rollout_by_id(quiet.rollout_id)).status)  # type: ignore[union-attr]
    finally:
        await client.close()
    return rec.steps
