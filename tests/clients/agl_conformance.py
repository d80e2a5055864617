"""Drive every LightningStore method with agentlightning 0.3.0's own client; print what came back.

Run by the agentlightning 0.3.0 interpreter: ``python agl_conformance.py URL [URL ...]``. The
same script runs against each server in turn; the test compares the answers after replacing
generated ids and times with placeholders. Output: one JSON object ``{url: [[step, value]]}``.
A URL may be several, comma-separated, servers of one shared store: requests then alternate
between them (``requests_per_server`` in the output counts them).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import os
import sys
import time
from typing import Any

import aiohttp
from agentlightning.store.client_server import API_V1_AGL_PREFIX, LightningStoreClient
from agentlightning.types import LLM, EnqueueRolloutRequest, RolloutConfig, Span
from opentelemetry.sdk.trace import TracerProvider

RETRY = RolloutConfig(max_attempts=2, retry_condition=["failed", "unresponsive"])


class RoundRobinClient(LightningStoreClient):
    """agentlightning's client, unchanged but for the server each request goes to: the next of
    several, in turn (it reads its address afresh for every request)."""

    # Requests (and OTLP endpoints) per server, over every client: shown in the output.
    sent: collections.Counter[str] = collections.Counter()

    def __init__(self, roots: list[str]) -> None:
        self._next_root = itertools.cycle(roots).__next__
        super().__init__(roots[0], retry_delays=(), health_retry_delays=())

    @property  # type: ignore[override]
    def server_address_root(self) -> str:
        root = self._next_root()
        self.sent[root] += 1
        return root

    @server_address_root.setter
    def server_address_root(self, value: str) -> None:
        pass  # the cycle decides

    @property  # type: ignore[override]
    def server_address(self) -> str:
        return self.server_address_root + API_V1_AGL_PREFIX

    @server_address.setter
    def server_address(self, value: str) -> None:
        pass


def connect(urls: str) -> LightningStoreClient:
    """The client for one server, or for several of one shared store (comma-separated)."""
    roots = [u.rstrip("/") for u in urls.split(",")]
    if len(roots) == 1:
        return LightningStoreClient(roots[0], retry_delays=(), health_retry_delays=())
    return RoundRobinClient(roots)


def dump(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [dump(v) for v in value]
    if isinstance(value, dict):
        return {k: dump(v) for k, v in value.items()}
    return value


class Recorder:
    def __init__(self) -> None:
        self.steps: list[list[Any]] = []
        self.last = time.monotonic()

    def __call__(self, step: str, value: Any) -> Any:
        now = time.monotonic()
        if os.environ.get("CONFORMANCE_TIMES"):
            print(f"{now - self.last:.3f} {step}", file=sys.stderr)
        self.last = now
        self.steps.append([step, dump(value)])
        return value

    async def error(self, step: str, call: Any) -> None:
        """A call that must fail: record the HTTP status (or the exception type) it failed with."""
        try:
            await call
        except aiohttp.ClientResponseError as exc:
            self.steps.append([step, {"status": exc.status}])
        except Exception as exc:  # noqa: BLE001 - the type is what is compared
            self.steps.append([step, {"error": type(exc).__name__}])
        else:
            self.steps.append([step, "no error"])
        self("_timing:" + step, None)
        self.steps.pop()


def span(rollout_id: str, attempt_id: str, seq: int, name: str, n: int) -> Span:
    trace_id = f"{n:032x}"
    return Span.model_validate(
        {
            "rollout_id": rollout_id,
            "attempt_id": attempt_id,
            "sequence_id": seq,
            "trace_id": trace_id,
            "span_id": f"{n:016x}",
            "parent_id": None if n % 2 else f"{n + 1000:016x}",
            "name": name,
            "status": {"status_code": "OK", "description": None},
            "attributes": {"k": n, "list": [1, 2], "text": "é"},
            "events": [{"name": "e", "attributes": {"a": 1}, "timestamp": 1.5}],
            "links": [],
            "start_time": 100.0 + n,
            "end_time": 100.5 + n,
            "context": {
                "trace_id": trace_id,
                "span_id": f"{n:016x}",
                "is_remote": False,
                "trace_state": {},
            },
            "parent": None,
            "resource": {"attributes": {"service.name": "conformance"}, "schema_url": ""},
        }
    )


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
