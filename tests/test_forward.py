"""End to end: receivers forwarding into a real LightningStore server (``agl store`` 0.3.0).

One server runs for the module (importing agentlightning takes seconds); the restart test stops
and starts it, and every test works in rollouts of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lightning_otlp import ids as ids_module
from lightning_otlp.forward.store import ForwardingStore
from lightning_otlp.receiver.route import RoutingConfig, route

from .forwarding import (
    AglServer,
    assert_in_order,
    drained,
    identities,
    local_rollouts,
)
from .payloads import GENAI_CONTENT, genai_request, make_request, make_span
from .support import ReceiverProcess, node_script, validate_with_agl, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.agl]

# -- SDK clients -> receiver -> server --------------------------------------------------------


def test_python_sdk_spans_reach_the_server_in_a_created_rollout(
    forwarding_receiver: Callable[..., tuple[ReceiverProcess, str]], agl: AglServer
) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import Status, StatusCode

    # No ids: a per-trace rollout, held in the outbox for the affinity window (short here).
    receiver, url = forwarding_receiver(flags=("--affinity-window", "0.5"))
    provider = TracerProvider(resource=Resource.create({"service.name": "py-agent"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=receiver.traces_url)))
    tracer = provider.get_tracer("tests.forward")
    with tracer.start_as_current_span("agent.run", attributes={"agent.name": "planner"}) as root:
        for i in range(5):
            with tracer.start_as_current_span(
                "chat gpt-4o-mini",
                attributes={
                    "gen_ai.usage.input_tokens": 10 + i,
                    "agent.tools": ["a", "b"],
                    "gen_ai.input.messages": GENAI_CONTENT["gen_ai.input.messages"],
                },
            ) as span:
                span.add_event("gen_ai.choice", {"index": i})
                span.set_status(Status(StatusCode.OK))
    provider.shutdown()
    trace_id = format(root.get_span_context().trace_id, "032x")

    drained(url, 6)
    local = local_rollouts(url)
    assert len(local) == 1
    server_rollout = agl.linked(local[0])
    # The link is visible from the server side: the receiver's id and the trace it came from.
    assert server_rollout["metadata"]["lightning_otlp"]["trace_id"] == trace_id
    attempt_id = server_rollout["attempt"]["attempt_id"]
    spans = agl.spans(server_rollout["rollout_id"])
    validated = validate_with_agl("Span", spans)
    assert len(validated) == 6
    assert {s["attempt_id"] for s in validated} == {attempt_id}
    assert {s["trace_id"] for s in validated} == {trace_id}
    assert_in_order(validated)
    # The chat spans carry GenAI content (a prompt): forwarded as model calls in
    # Agent Lightning's shape, as the records show them.
    assert [s["name"] for s in sorted(validated, key=lambda s: s["sequence_id"])] == [
        "agent.run",
        *["openai.chat.completion"] * 5,
    ]
    chats = [s for s in validated if s["name"] != "agent.run"]
    assert {s["attributes"]["lightning_otlp.original_name"] for s in chats} == {"chat gpt-4o-mini"}
    for span in validated:
        assert span["resource"]["attributes"]["service.name"] == "py-agent"
        assert span["resource"]["attributes"]["agentlightning.rollout_id"] == span["rollout_id"]
        assert span["attributes"]["agentlightning.span_sequence_id"] == span["sequence_id"]
        if span["name"] != "agent.run":
            assert span["attributes"]["agent.tools"] == ["a", "b"]
            assert span["status"]["status_code"] == "OK"
            assert span["events"][0]["name"] == "gen_ai.choice"
            assert span["parent_id"] is not None
    assert server_rollout["status"] == "running"
    assert agl.attempts(server_rollout["rollout_id"])[0]["status"] == "running"


_RUNNER_AGENT = """
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
provider = TracerProvider(resource=Resource.create())  # reads OTEL_RESOURCE_ATTRIBUTES
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # reads OTEL_EXPORTER_*
tracer = provider.get_tracer("runner-agent")
with tracer.start_as_current_span("agent.run"):
    for i in range(7):
        with tracer.start_as_current_span(f"step {i}", attributes={"step": i}):
            pass
provider.shutdown()
"""


def test_runner_flow_spans_land_in_the_runners_rollout(
    forwarding_receiver: Callable[..., tuple[ReceiverProcess, str]], agl: AglServer
) -> None:
    receiver, url = forwarding_receiver()
    rollout = agl.create_rollout(input={"task": "add 2 and 2"}, mode="train")
    rollout_id, attempt_id = rollout["rollout_id"], rollout["attempt"]["attempt_id"]
    before = len(agl.rollouts())
    env = {
        **os.environ,
        "OTEL_RESOURCE_ATTRIBUTES": (
            f"service.name=runner-agent,agentlightning.rollout_id={rollout_id},"
            f"agentlightning.attempt_id={attempt_id}"
        ),
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.traces_url,
    }
    subprocess.run([sys.executable, "-c", _RUNNER_AGENT], env=env, check=True, timeout=60)

    report = drained(url, 8)
    assert report["rollouts_created"] == 0  # forwarded under the runner's own ids
    spans = validate_with_agl("Span", agl.spans(rollout_id, attempt_id))
    assert len(spans) == 8
    assert {(s["rollout_id"], s["attempt_id"]) for s in spans} == {(rollout_id, attempt_id)}
    assert_in_order(spans)
    assert len(agl.rollouts()) == before
    # The server's own reaction to spans: the runner's attempt is running now.
    assert agl.attempts(rollout_id)[0]["status"] == "running"
    assert agl.rollout(rollout_id)["input"] == {"task": "add 2 and 2"}


@pytest.mark.node
def test_node_sdk_spans_land_in_a_second_attempt(
    forwarding_receiver: Callable[..., tuple[ReceiverProcess, str]], agl: AglServer
) -> None:
    receiver, url = forwarding_receiver()
    rollout = agl.create_rollout(input={"task": "retry me"})
    rollout_id, first = rollout["rollout_id"], rollout["attempt"]["attempt_id"]
    second = agl.http.post(f"/v1/agl/rollouts/{rollout_id}/attempts", json={}).json()["attempt"]
    env = {
        **os.environ,
        "OTEL_RESOURCE_ATTRIBUTES": (
            f"agentlightning.rollout_id={rollout_id},agentlightning.attempt_id={second['attempt_id']}"
        ),
    }
    out = subprocess.run(
        ["node", str(node_script("forward_agent.js")), receiver.traces_url, "6"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    sent = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(sent) == 7

    drained(url, 7)
    assert agl.spans(rollout_id, first) == []
    spans = validate_with_agl("Span", agl.spans(rollout_id, second["attempt_id"]))
    assert sorted(identities(spans)) == sorted((s["trace_id"], s["span_id"]) for s in sent)
    assert_in_order(spans)
    by_id = {s["span_id"]: s for s in spans}
    for original in sent:
        stored = by_id[original["span_id"]]
        # Model calls arrive in Agent Lightning's shape, their own name kept beside it.
        name = stored["attributes"].get("lightning_otlp.original_name", stored["name"])
        assert name == original["name"]
        assert stored["parent_id"] == original["parent_id"]
        assert len(stored["events"]) == original["events"]
        assert len(stored["links"]) == original["links"]
        for key, value in original["attributes"].items():
            assert stored["attributes"][key] == value
        assert stored["resource"]["attributes"]["service.name"] == "node-forward-agent"


def test_local_status_changes_are_mirrored(tmp_path: Path, agl: AglServer) -> None:
    outbox = tmp_path / "mirror.db"
    store = ForwardingStore(agl.url, str(outbox), max_backoff=0.5)
    store.open()
    try:
        request = genai_request(20, rollouts=2, seed=7001)
        store.write(route(request, RoutingConfig()))
        wait_until(lambda: store.status()["forwarded_spans"] == 20, "20 spans forwarded")
        local = sorted((r["rollout_id"], r["attempt"]["attempt_id"]) for r in store.rollouts())
        linked = [agl.linked(rid) for rid, _ in local]
        # The rollout spans end: one OK, one ERROR. The receiver derives the outcomes.
        done = []
        for (rollout_id, attempt_id), code in zip(local, (1, 2), strict=True):
            span = make_span(
                "agentlightning.rollout",
                attributes={
                    "agentlightning.rollout_id": rollout_id,
                    "agentlightning.attempt_id": attempt_id,
                },
            )
            span.status.code = code
            done.append(span)
        store.write(route(make_request(done), RoutingConfig()))
        wait_until(
            lambda: (
                [agl.rollout(r["rollout_id"])["status"] for r in linked] == ["succeeded", "failed"]
            ),
            "statuses mirrored",
        )
        attempts = [agl.attempts(r["rollout_id"])[0] for r in linked]
        assert [a["status"] for a in attempts] == ["succeeded", "failed"]
        assert all(a["end_time"] is not None for a in attempts)
        assert store.status()["status_updates"] == 4
    finally:
        store.close()


def test_spans_of_unbound_traces_wait_in_the_outbox(tmp_path: Path, agl: AglServer) -> None:
    """Agent spans without ids are held until their trace is bound (or the window closes), so
    the server never receives a span in a rollout it would have to leave."""
    store = ForwardingStore(agl.url, str(tmp_path / "hold.db"), max_backoff=0.5)
    store.open()
    try:
        runner = agl.create_rollout(input={"task": "hold"})
        ids = {
            "agentlightning.rollout_id": runner["rollout_id"],
            "agentlightning.attempt_id": runner["attempt"]["attempt_id"],
        }
        trace = make_span("x").trace_id
        base = time.time_ns()
        agent = [
            make_span(f"agent-{i}", trace_id=trace, start_ns=base + (i + 1) * 1000)
            for i in range(3)
        ]
        store.write(route(make_request(agent), RoutingConfig()))
        other = genai_request(5, rollouts=1, seed=7100)
        store.write(route(other, RoutingConfig()))
        wait_until(lambda: store.status()["forwarded_spans"] == 5, "the bound spans forwarded")
        time.sleep(1.0)  # several forwarding rounds: the agent spans stay
        assert store.status()["pending_spans"] == 3
        auto = ids_module.rollout_id_for_trace(trace.hex())
        assert not [
            r
            for r in agl.rollouts()
            if ((r.get("metadata") or {}).get("lightning_otlp") or {}).get("rollout_id") == auto
        ]

        marker = make_span(
            "agentlightning.rollout.start", trace_id=trace, attributes=ids, start_ns=base
        )
        store.write(route(make_request([marker]), RoutingConfig()))
        wait_until(lambda: store.status()["forwarded_spans"] == 9, "the bound trace forwarded")
        on_server = sorted(agl.spans(runner["rollout_id"]), key=lambda s: s["sequence_id"])
        assert [s["name"] for s in on_server] == [
            "agentlightning.rollout.start",
            "agent-0",
            "agent-1",
            "agent-2",
        ]
        validate_with_agl("Span", on_server)

        # A trace never bound goes, once its window closes, to a rollout of its own.
        store.affinity.window = 0.5
        orphan = make_span("orphan")
        store.write(route(make_request([orphan]), RoutingConfig()))
        wait_until(lambda: store.status()["forwarded_spans"] == 10, "the orphan forwarded")
        server = agl.linked(ids_module.rollout_id_for_trace(orphan.trace_id.hex()))
        assert [s["name"] for s in agl.spans(server["rollout_id"])] == ["orphan"]
    finally:
        store.close()
