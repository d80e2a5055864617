"""Drive every LightningStore method with agentlightning 0.3.0's own client; print what came back.

Run by the agentlightning 0.3.0 interpreter: ``python agl_conformance.py URL [URL ...]``. The
same script runs against each server in turn; the test compares the answers after replacing
generated ids and times with placeholders. Output: one JSON object ``{url: [[step, value]]}``.
A URL may be several, comma-separated, servers of one shared store: requests then alternate
between them (``requests_per_server`` in the output counts them). The scenarios: every method
here, the watchdog and sequence ids in ``agl_lifecycle.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
from typing import Any

import aiohttp
from agentlightning.types import LLM, EnqueueRolloutRequest
from agl_client import RETRY, Recorder, RoundRobinClient, connect, span
from agl_lifecycle import sequence, watchdog
from opentelemetry.sdk.trace import TracerProvider


async def scenario(url: str) -> list[list[Any]]:
    client = connect(url)
    rec = Recorder()
    http = aiohttp.ClientSession()
    next_root = itertools.cycle(url.split(",")).__next__

    async def raw(method: str, path: str, **kw: Any) -> Any:
        async with http.request(method, next_root() + "/v1/agl" + path, **kw) as resp:
            body = await resp.json(content_type=None)
            return {"status": resp.status, "body": body}

    try:
        rec("health", await raw("GET", "/health"))
        # Resources
        llm = LLM(endpoint="http://llm:8000/v1", model="m1", sampling_parameters={"t": 0.5})
        first = rec("add_resources", await client.add_resources({"main_llm": llm}))
        rec("latest_resources", await client.get_latest_resources())
        rec("resources_by_id", await client.get_resources_by_id(first.resources_id))
        rec("resources_missing", await client.get_resources_by_id("rs-missing"))
        llm2 = LLM(endpoint="http://llm:8000/v1", model="m2")
        rec(
            "update_resources",
            await client.update_resources(first.resources_id, {"main_llm": llm2}),
        )
        rec("upsert_resources", await client.update_resources("rs-custom", {"main_llm": llm}))
        rec("latest_after_upsert", await client.get_latest_resources())
        rec("query_resources", await client.query_resources())
        rec(
            "query_resources_sorted",
            await client.query_resources(sort_by="version", sort_order="desc"),
        )
        rec(
            "query_resources_contains", await client.query_resources(resources_id_contains="custom")
        )
        rec("query_resources_page", await client.query_resources(limit=1, offset=1))
        rec(
            "get_resources_raw",
            await raw("GET", "/resources", params={"resources_id": "rs-custom"}),
        )

        # The queue
        r1 = rec("enqueue", await client.enqueue_rollout({"q": 1}, mode="train"))
        many = rec(
            "enqueue_many",
            await client.enqueue_many_rollouts(
                [
                    EnqueueRolloutRequest(input={"q": 2}, mode="val", config=RETRY),
                    EnqueueRolloutRequest(input={"q": 3}, metadata={"tag": "x"}),
                    EnqueueRolloutRequest(input="four", resources_id="rs-custom"),
                ]
            ),
        )
        rec("stats_queued", await raw("GET", "/statistics"))
        d1 = rec("dequeue", await client.dequeue_rollout(worker_id="w1"))
        assert d1 is not None and d1.rollout_id == r1.rollout_id
        d23 = rec("dequeue_many", await client.dequeue_many_rollouts(limit=2, worker_id="w2"))
        rec("workers_after_dequeue", await client.query_workers())

        # Spans and sequence ids
        a1 = d1.attempt
        # lightning-otlp issues at least now in microseconds (OTLP spans are numbered by their
        # start time), upstream counts from 1: compare what both promise, a rising number.
        seq1 = await client.get_next_span_sequence_id(d1.rollout_id, a1.attempt_id)
        seq2 = await client.get_next_span_sequence_id(d1.rollout_id, a1.attempt_id)
        rec("next_seq_rises", seq1 >= 1 and seq2 > seq1)
        rec("add_span", await client.add_span(span(d1.rollout_id, a1.attempt_id, 3, "llm", 1)))
        rec("add_span_dup", await client.add_span(span(d1.rollout_id, a1.attempt_id, 3, "llm", 1)))
        rec("add_span_2", await client.add_span(span(d1.rollout_id, a1.attempt_id, 7, "tool", 2)))
        seq3 = await client.get_next_span_sequence_id(d1.rollout_id, a1.attempt_id)
        rec("next_seq_after_explicit", seq3 > max(7, seq2))
        rec("rollout_after_span", await client.get_rollout_by_id(d1.rollout_id))
        provider = TracerProvider()
        tracer = provider.get_tracer("conformance")
        with tracer.start_as_current_span("otel-root") as root:
            root.set_attribute("x", 1)
            with tracer.start_as_current_span("otel-child"):
                pass
        readable = root  # a finished SDK span is a ReadableSpan
        rec(
            "add_otel_span",
            await client.add_otel_span(d1.rollout_id, a1.attempt_id, readable, sequence_id=9),  # type: ignore[arg-type]
        )
        rec(
            "add_many_spans",
            await client.add_many_spans(
                [
                    span(d1.rollout_id, a1.attempt_id, 20, "llm", 3),
                    span(d1.rollout_id, a1.attempt_id, 21, "reward", 4),
                ]
            ),
        )
        rec("query_spans", await client.query_spans(d1.rollout_id))
        rec("query_spans_latest", await client.query_spans(d1.rollout_id, "latest"))
        rec(
            "query_spans_attempt",
            await client.query_spans(d1.rollout_id, a1.attempt_id, limit=2, offset=1),
        )
        rec("query_spans_name", await client.query_spans(d1.rollout_id, name="llm"))
        rec(
            "query_spans_contains",
            await client.query_spans(
                d1.rollout_id, name_contains="o", span_id_contains="2", filter_logic="or"
            ),
        )
        rec(
            "query_spans_desc",
            await client.query_spans(d1.rollout_id, sort_by="start_time", sort_order="desc"),
        )
        rec("query_spans_trace", await client.query_spans(d1.rollout_id, trace_id=f"{3:032x}"))
        rec("query_spans_none", await client.query_spans("ro-missing"))
        rec(
            "get_spans_raw",
            await raw("GET", "/spans", params={"rollout_id": d1.rollout_id, "limit": "2"}),
        )
        await rec.error(
            "add_span_missing_rollout", client.add_span(span("ro-missing", "at-x", 1, "x", 9))
        )
        await rec.error(
            "add_span_missing_attempt",
            client.add_span(span(d1.rollout_id, "at-missing", 1, "x", 9)),
        )

        # Attempt outcomes: succeed, fail with a retry, fail for good
        rec(
            "attempt_succeeded",
            await client.update_attempt(d1.rollout_id, a1.attempt_id, status="succeeded"),
        )
        rec("rollout_succeeded", await client.get_rollout_by_id(d1.rollout_id))
        rec("worker_after_success", await client.get_worker_by_id("w1"))
        retry = next(r for r in d23 if r.config.max_attempts == 2)
        rec(
            "attempt_failed_retry",
            await client.update_attempt(retry.rollout_id, "latest", status="failed"),
        )
        rec("rollout_requeuing", await client.get_rollout_by_id(retry.rollout_id))
        d_retry = rec("dequeue_retry", await client.dequeue_rollout(worker_id="w1"))
        rec(
            "attempt_failed_final",
            await client.update_attempt(
                retry.rollout_id, "latest", status="failed", metadata={"why": "x"}
            ),
        )
        rec("rollout_failed", await client.get_rollout_by_id(retry.rollout_id))
        rec("attempts", await client.query_attempts(retry.rollout_id))
        rec(
            "attempts_desc",
            await client.query_attempts(
                retry.rollout_id, sort_by="sequence_id", sort_order="desc", limit=1
            ),
        )
        rec("attempts_raw", await raw("GET", f"/rollouts/{retry.rollout_id}/attempts"))
        rec("latest_attempt", await client.get_latest_attempt(retry.rollout_id))
        rec("latest_attempt_missing", await client.get_latest_attempt("ro-missing"))
        other = next(r for r in d23 if r.rollout_id != retry.rollout_id)
        rec(
            "heartbeat",
            await client.update_attempt(
                other.rollout_id,
                other.attempt.attempt_id,
                last_heartbeat_time=123.0,
                worker_id="w9",
            ),
        )
        rec("rollout_after_heartbeat", await client.get_rollout_by_id(other.rollout_id))
        await rec.error(
            "update_attempt_missing", client.update_attempt("ro-missing", "latest", status="failed")
        )
        await rec.error(
            "update_attempt_missing_attempt",
            client.update_attempt(other.rollout_id, "at-missing", status="failed"),
        )
        assert d_retry is not None

        # Rollout updates
        rec(
            "update_rollout",
            await client.update_rollout(other.rollout_id, metadata={"m": 1}, mode="test"),
        )
        rec("cancel_rollout", await client.update_rollout(other.rollout_id, status="cancelled"))
        queued = many[2]
        rec(
            "update_queued_config",
            await client.update_rollout(queued.rollout_id, config=RETRY, input={"new": True}),
        )
        rec(
            "update_null_status",
            await raw("POST", f"/rollouts/{queued.rollout_id}", json={"status": None}),
        )
        rec(
            "requeue_by_update", await client.update_rollout(many[1].rollout_id, status="requeuing")
        )
        rec("dequeue_after_requeue", await client.dequeue_rollout(worker_id="w3"))
        rec("dequeue_after_requeue_2", await client.dequeue_rollout(worker_id="w3"))
        rec("dequeue_empty", await client.dequeue_rollout(worker_id="w4"))
        rec("dequeue_empty_no_worker", await client.dequeue_rollout())
        await rec.error(
            "update_rollout_missing", client.update_rollout("ro-missing", status="failed")
        )

        # start_rollout / start_attempt
        started = rec(
            "start_rollout",
            await client.start_rollout({"s": 1}, mode="train", metadata={"a": 1}, worker_id="w5"),
        )
        rec("start_attempt", await client.start_attempt(started.rollout_id, worker_id="w6"))
        rec("start_attempt_no_worker", await client.start_attempt(started.rollout_id))
        await rec.error("start_attempt_missing", client.start_attempt("ro-missing"))
        rec("start_rollout_plain", await client.start_rollout(None))

        # Queries
        rec("query_rollouts", await client.query_rollouts())
        rec("query_rollouts_status", await client.query_rollouts(status_in=["failed", "succeeded"]))
        rec(
            "query_rollouts_page",
            await client.query_rollouts(sort_by="start_time", sort_order="desc", limit=2, offset=1),
        )
        rec(
            "query_rollouts_ids",
            await client.query_rollouts(rollout_id_in=[r1.rollout_id, started.rollout_id]),
        )
        rec(
            "query_rollouts_or",
            await client.query_rollouts(
                status_in=["cancelled"], rollout_id_in=[r1.rollout_id], filter_logic="or"
            ),
        )
        rec(
            "query_rollouts_contains",
            await client.query_rollouts(rollout_id_contains=r1.rollout_id[3:9]),
        )
        rec("query_rollouts_mode_sort", await client.query_rollouts(sort_by="mode"))
        rec(
            "query_rollouts_end_sort",
            await client.query_rollouts(sort_by="end_time", sort_order="desc"),
        )
        rec("query_rollouts_status_sort", await client.query_rollouts(sort_by="status"))
        await rec.error("query_rollouts_bad_sort", client.query_rollouts(sort_by="nope"))
        await rec.error("query_rollouts_bad_limit", client.query_rollouts(limit=-2))
        rec(
            "get_rollouts_raw",
            await raw(
                "GET", "/rollouts", params=[("status_in", "failed"), ("status_in", "cancelled")]
            ),
        )
        rec(
            "get_rollouts_raw_page",
            await raw("GET", "/rollouts", params={"limit": "1", "offset": "2", "sort_by": "mode"}),
        )
        rec("get_rollout_missing", await client.get_rollout_by_id("ro-missing"))
        rec(
            "wait",
            await client.wait_for_rollouts(
                rollout_ids=[r1.rollout_id, retry.rollout_id, started.rollout_id, "ro-missing"],
                timeout=0.05,
            ),
        )
        rec("wait_zero", await client.wait_for_rollouts(rollout_ids=[r1.rollout_id], timeout=0))

        # Workers
        rec("update_worker", await client.update_worker("w1", heartbeat_stats={"gpu": 1}))
        rec("update_worker_plain", await client.update_worker("w-new"))
        rec("get_worker", await client.get_worker_by_id("w1"))
        rec("get_worker_missing", await client.get_worker_by_id("w-missing"))
        rec("query_workers", await client.query_workers())
        rec("query_workers_status", await client.query_workers(status_in=["idle"]))
        rec(
            "query_workers_sorted",
            await client.query_workers(sort_by="worker_id", sort_order="desc", limit=3),
        )
        rec(
            "query_workers_contains",
            await client.query_workers(
                worker_id_contains="new", status_in=["busy"], filter_logic="or"
            ),
        )
        rec("get_workers_raw", await raw("GET", "/workers", params={"status_in": "busy"}))

        # Validation errors
        rec(
            "enqueue_invalid",
            await raw("POST", "/queues/rollouts/enqueue", json={"rollouts": [{"mode": "train"}]}),
        )
        rec(
            "start_rollout_invalid_config",
            await raw("POST", "/rollouts", json={"input": 1, "config": {"max_attempts": 0}}),
        )
        rec(
            "search_invalid_status",
            await raw("POST", "/rollouts/search", json={"status_in": ["nope"]}),
        )
        rec("spans_next_missing", await raw("POST", "/spans/next", json={"rollout_id": "x"}))
        rec("statistics", await client.statistics())
    finally:
        await http.close()
        await client.close()
    return rec.steps


SCENARIOS = {"api": scenario, "watchdog": watchdog, "sequence": sequence}


def main() -> None:
    names = os.environ.get("CONFORMANCE_SCENARIOS", "api,watchdog").split(",")
    out: dict[str, dict[str, Any]] = {name: {} for name in names}
    for url in sys.argv[1:]:
        for name in names:
            out[name][url] = asyncio.run(SCENARIOS[name](url))
    print(json.dumps({**out, "requests_per_server": RoundRobinClient.sent}))


if __name__ == "__main__":
    main()
