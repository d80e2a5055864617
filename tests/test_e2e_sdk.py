"""The Python SDK against a real receiver: stock SDK exporters, real instrumentation packages,
``opentelemetry-instrument`` in a subprocess, a Node.js service, agentlightning's own readers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from lightning_otlp import RolloutSpanProcessor, current_rollout, emit_reward, rollout, semconv

from .support import ROOT, ReceiverProcess, node_script, run_in_agl, validate_with_agl

pytestmark = pytest.mark.e2e

EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent

StartReceiver = Callable[..., ReceiverProcess]


class _Tool(BaseHTTPRequestHandler):
    """The "tool" an agent calls over HTTP."""

    def do_GET(self) -> None:  # http.server's naming
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def tool() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Tool)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/tool"
    server.shutdown()
    server.server_close()


@pytest.fixture
def receiver(start_receiver: StartReceiver) -> ReceiverProcess:
    return start_receiver()


def sdk_provider(exporter: SpanExporter) -> TracerProvider:
    """An agent's provider: RolloutSpanProcessor plus the stock batch processor and exporter."""
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(RolloutSpanProcessor())
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=100))
    return provider


def by_rollout(spans: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        out.setdefault(span["rollout_id"], []).append(span)
    return out


def url_of(span: dict[str, Any]) -> Any:
    """The URL an httpx client span recorded, under the old or the stable HTTP semconv."""
    attributes = span["attributes"]
    return attributes.get("url.full", attributes.get("http.url"))


def stamped(span: dict[str, Any]) -> tuple[Any, Any]:
    """The ids a span carries as its own attributes (what RolloutSpanProcessor sets)."""
    attributes = span["attributes"]
    return attributes.get(semconv.ROLLOUT_ID), attributes.get(semconv.ATTEMPT_ID)


def otel_env(receiver: ReceiverProcess, tool: str, **extra: str) -> dict[str, str]:
    """The environment a user sets for ``opentelemetry-instrument``, aimed at this receiver."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.http_url,
        TOOL_URL=tool,
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    env.update(extra)
    return env


def run(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout


def validate(receiver: ReceiverProcess, spans: list[dict[str, Any]]) -> None:
    validate_with_agl("Span", spans)
    validate_with_agl("AttemptedRollout", receiver.rollouts())


def test_httpx_spans_inside_a_rollout_land_in_it(receiver: ReceiverProcess, tool: str) -> None:
    provider = sdk_provider(HttpSpanExporter(endpoint=receiver.traces_url))
    tracer = provider.get_tracer("agent")
    client = httpx.Client()
    async_client = httpx.AsyncClient()
    HTTPXClientInstrumentor.instrument_client(client, tracer_provider=provider)
    HTTPXClientInstrumentor.instrument_client(async_client, tracer_provider=provider)

    async def fetch_async() -> None:
        async with async_client:
            await async_client.get(tool, params={"via": "async"})

    with rollout(
        input={"task": "weather", "city": "Oslo"}, mode="train", tracer_provider=provider
    ) as ids:
        with tracer.start_as_current_span("plan"):
            client.get(tool, params={"via": "sync"})
        asyncio.run(fetch_async())
    client.get(tool, params={"via": "outside"})  # outside any rollout
    client.close()
    provider.shutdown()

    spans = receiver.wait_for_spans(6)
    mine = receiver.spans(ids.rollout_id)
    names = sorted(s["name"] for s in mine)
    assert names == sorted(["GET", "GET", "plan", semconv.ROLLOUT_SPAN, semconv.ROLLOUT_START_SPAN])
    assert {s["attempt_id"] for s in mine} == {ids.attempt_id}
    assert {s["trace_id"] for s in mine} == {mine[0]["trace_id"]}
    urls = sorted(url_of(s) for s in mine if s["name"] == "GET")
    assert urls == [tool + "?via=async", tool + "?via=sync"]
    # The call outside the rollout follows the receiver's routing rules: a rollout of its own.
    (outside,) = [s for s in spans if s["rollout_id"] != ids.rollout_id]
    assert url_of(outside) == tool + "?via=outside"
    (record,) = [r for r in receiver.rollouts() if r["rollout_id"] == ids.rollout_id]
    assert record["input"] == {"task": "weather", "city": "Oslo"}
    assert record["mode"] == "train"
    assert record["attempt"]["attempt_id"] == ids.attempt_id
    validate(receiver, spans)


def test_concurrent_tasks_and_threads_never_cross(receiver: ReceiverProcess) -> None:
    provider = sdk_provider(GrpcSpanExporter(endpoint=receiver.grpc_target, insecure=True))
    tracer = provider.get_tracer("agent")
    expected: dict[str, set[str]] = {}
    lock = threading.Lock()

    def note(span_name: str, rollout_id: str) -> None:
        with lock:
            expected.setdefault(rollout_id, set()).add(span_name)

    async def task(i: int) -> None:
        async with rollout(tracer_provider=provider) as ids:
            for step in range(3):
                name = f"task.{i}.{step}"
                with tracer.start_as_current_span(name):
                    await asyncio.sleep(0.001 * (i % 3))
                    assert current_rollout() == ids
                note(name, ids.rollout_id)

    async def tasks() -> None:
        await asyncio.gather(*(task(i) for i in range(50)))

    barrier = threading.Barrier(9)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            with rollout(tracer_provider=provider) as ids:
                barrier.wait(20)
                for step in range(3):
                    name = f"thread.{i}.{step}"
                    with tracer.start_as_current_span(name):
                        assert current_rollout() == ids
                    note(name, ids.rollout_id)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    barrier.wait(20)  # the threads' spans overlap the tasks'
    asyncio.run(tasks())
    for t in threads:
        t.join()
    provider.shutdown()
    assert errors == []

    rollouts = by_rollout(receiver.wait_for_spans(58 * 5))
    assert len(expected) == 58
    for rollout_id, names in expected.items():
        stored = {s["name"] for s in rollouts[rollout_id]}
        assert stored == names | {semconv.ROLLOUT_SPAN, semconv.ROLLOUT_START_SPAN}
    assert set(rollouts) == set(expected)
    assert len({r["rollout_id"] for r in receiver.rollouts()}) == 58


def test_nested_rollouts_and_errors_at_the_receiver(receiver: ReceiverProcess) -> None:
    provider = sdk_provider(HttpSpanExporter(endpoint=receiver.traces_url))
    tracer = provider.get_tracer("agent")

    @rollout(mode="val", tracer_provider=provider)
    def judge() -> Any:
        tracer.start_span("judge.step").end()
        return current_rollout()

    @rollout(tracer_provider=provider)
    async def failing() -> None:
        tracer.start_span("failing.step").end()
        raise TimeoutError("tool timed out")

    with rollout(input="outer task", tracer_provider=provider) as outer:
        tracer.start_span("outer.before").end()
        judged = judge()
        with pytest.raises(TimeoutError):
            asyncio.run(failing())
        assert current_rollout() == outer
        tracer.start_span("outer.after").end()
    provider.shutdown()

    spans = receiver.wait_for_spans(10)
    rollouts = by_rollout(spans)
    assert len(rollouts) == 3
    assert {s["name"] for s in rollouts[outer.rollout_id]} == {
        "outer.before",
        "outer.after",
        semconv.ROLLOUT_SPAN,
        semconv.ROLLOUT_START_SPAN,
    }
    assert {s["name"] for s in rollouts[judged.rollout_id]} == {
        "judge.step",
        semconv.ROLLOUT_SPAN,
        semconv.ROLLOUT_START_SPAN,
    }
    (failed_id,) = set(rollouts) - {outer.rollout_id, judged.rollout_id}
    statuses = {s["name"]: s["status"] for s in rollouts[failed_id]}
    assert statuses[semconv.ROLLOUT_SPAN] == {
        "status_code": "ERROR",
        "description": "TimeoutError: tool timed out",
    }
    assert "failing.step" in statuses
    records = {r["rollout_id"]: r for r in receiver.rollouts()}
    assert records[outer.rollout_id]["input"] == "outer task"
    assert records[judged.rollout_id]["mode"] == "val"
    validate(receiver, spans)


@pytest.mark.agl
def test_emitted_rewards_read_back_by_agentlightning(receiver: ReceiverProcess) -> None:
    provider = sdk_provider(HttpSpanExporter(endpoint=receiver.traces_url))
    rewards: list[tuple[Any, str | None]] = [
        (0.75, None),
        (1, None),
        ({"efficiency": 0.25, "task_completion": 1.0, "style": -0.5}, "task_completion"),
    ]
    with rollout(tracer_provider=provider) as ids:
        for reward, primary in rewards:
            emit_reward(reward, primary, tracer_provider=provider)
    provider.shutdown()
    receiver.wait_for_spans(5)
    stored = [s for s in receiver.spans(ids.rollout_id) if s["name"] == semconv.ANNOTATION_SPAN]
    stored.sort(key=lambda s: s["sequence_id"])
    assert len(stored) == 3

    read_back = run_in_agl(
        """
import json, sys
from agentlightning.emitter.reward import get_reward_value, get_rewards_from_span
from agentlightning.semconv import LightningSpanAttributes
from agentlightning.types import Span
from agentlightning.utils.otel import flatten_attributes
request = json.load(sys.stdin)
out = []
for record, (reward, primary) in zip(request["spans"], request["rewards"]):
    span = Span.model_validate(record)
    # The attributes agentlightning's own emit_reward would write for the same reward.
    if isinstance(reward, dict):
        dims = [{"name": primary, "value": float(reward[primary])}]
        dims += [{"name": k, "value": float(v)} for k, v in reward.items() if k != primary]
    else:
        dims = [{"name": "primary", "value": float(reward)}]
    upstream = flatten_attributes({LightningSpanAttributes.REWARD.value: dims})
    out.append({
        "value": get_reward_value(span),
        "dimensions": [r.model_dump() for r in get_rewards_from_span(span)],
        "upstream": upstream,
    })
print(json.dumps(out))
""",
        {"spans": stored, "rewards": rewards},
    )
    assert [r["value"] for r in read_back] == [0.75, 1.0, 1.0]
    assert read_back[2]["dimensions"] == [
        {"name": "task_completion", "value": 1.0},
        {"name": "efficiency", "value": 0.25},
        {"name": "style", "value": -0.5},
    ]
    for record, answer in zip(stored, read_back, strict=True):
        ours = {
            k: v for k, v in record["attributes"].items() if k.startswith("agentlightning.reward")
        }
        assert ours == answer["upstream"]
        assert record["rollout_id"] == ids.rollout_id and record["attempt_id"] == ids.attempt_id
        assert record["status"]["status_code"] == "OK"
    validate_with_agl("Span", stored)


def _node_service(receiver: ReceiverProcess, *flags: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        ["node", str(node_script("baggage_service.js")), receiver.traces_url, *flags],
        stdout=subprocess.PIPE,
        text=True,
        cwd=node_script("baggage_service.js").parent,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, "the Node.js service did not start"
    return proc, int(json.loads(line)["port"])


def _stop_node(proc: subprocess.Popen[str]) -> dict[str, int]:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    result: dict[str, int] = json.loads(out.strip().splitlines()[-1])
    return result


@pytest.mark.node
def test_baggage_carries_the_rollout_into_a_nodejs_service(receiver: ReceiverProcess) -> None:
    provider = sdk_provider(HttpSpanExporter(endpoint=receiver.traces_url))
    client = httpx.Client()
    HTTPXClientInstrumentor.instrument_client(client, tracer_provider=provider)
    proc, port = _node_service(receiver)
    try:
        with rollout(propagate=True, tracer_provider=provider) as ids:
            reply = client.get(f"http://127.0.0.1:{port}/widgets/7")
        assert reply.json() == {"item": "/widgets/7", "in_stock": 3}
    finally:
        node = _stop_node(proc)
    # Without the JS BaggageSpanProcessor the Node SDK does not copy Baggage onto its spans.
    bare, bare_port = _node_service(receiver, "--no-baggage-processor")
    try:
        with rollout(propagate=True, tracer_provider=provider) as bare_ids:
            client.get(f"http://127.0.0.1:{bare_port}/widgets/8")
    finally:
        bare_node = _stop_node(bare)
    client.close()
    provider.shutdown()
    assert node == {"exported": 2, "failures": 0}
    assert bare_node == {"exported": 2, "failures": 0}

    spans = receiver.wait_for_spans(2 * 5)
    node_spans = [
        s for s in spans if s["resource"]["attributes"].get("service.name") == "inventory-service"
    ]
    mine = receiver.spans(ids.rollout_id)
    node_in_rollout = [s for s in mine if s in node_spans]
    assert sorted(s["name"] for s in node_in_rollout) == ["GET", "inventory.lookup"]
    assert {s["attempt_id"] for s in node_in_rollout} == {ids.attempt_id}
    # One trace from the Python runner through the Node.js service.
    assert {s["trace_id"] for s in mine} == {mine[0]["trace_id"]}
    (python_get,) = [s for s in mine if s["name"] == "GET" and s not in node_spans]
    (node_server,) = [s for s in node_in_rollout if s["name"] == "GET"]
    assert node_server["parent_id"] == python_get["span_id"]

    # The Node spans carry the ids themselves (the receiver routes them by their own attributes).
    for span in node_in_rollout:
        assert stamped(span) == ids
    # Without the processor the Baggage still arrives (same trace) but no span carries the ids.
    bare_spans = [s for s in node_spans if s not in node_in_rollout]
    assert len(bare_spans) == 2
    assert all(stamped(s) == (None, None) for s in bare_spans)
    bare_trace = {s["trace_id"] for s in receiver.spans(bare_ids.rollout_id)}
    assert {s["trace_id"] for s in bare_spans} == bare_trace
    validate(receiver, spans)


def test_opentelemetry_instrument_adds_the_processor(receiver: ReceiverProcess, tool: str) -> None:
    command = [str(BIN / "opentelemetry-instrument"), sys.executable, "examples/zero_code_agent.py"]
    ids = json.loads(run(command, otel_env(receiver, tool, OTEL_SERVICE_NAME="weather-agent")))
    # The same program with lightning-otlp's instrumentor turned off, as a control.
    off = otel_env(receiver, tool, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="lightning_otlp")
    off_ids = json.loads(run(command, off))

    spans = receiver.wait_for_spans(2 * 4)
    mine = receiver.spans(ids["rollout_id"])
    assert sorted(s["name"] for s in mine) == sorted(
        ["GET", semconv.ANNOTATION_SPAN, semconv.ROLLOUT_SPAN, semconv.ROLLOUT_START_SPAN]
    )
    assert {s["attempt_id"] for s in mine} == {ids["attempt_id"]}
    (get,) = [s for s in mine if s["name"] == "GET"]
    assert url_of(get) == tool + "?city=Oslo"
    assert get["resource"]["attributes"]["service.name"] == "weather-agent"
    (record,) = [r for r in receiver.rollouts() if r["rollout_id"] == ids["rollout_id"]]
    assert record["input"] == {"city": "Oslo"} and record["mode"] == "test"
    assert stamped(get) == (ids["rollout_id"], ids["attempt_id"])
    # Without the processor the httpx span of the same program carries no ids.
    (off_get,) = [s for s in spans if s["name"] == "GET" and s is not get and s != get]
    assert off_get["trace_id"] in {s["trace_id"] for s in receiver.spans(off_ids["rollout_id"])}
    assert stamped(off_get) == (None, None)
    validate(receiver, spans)


def test_example_processor_in_code(receiver: ReceiverProcess, tool: str) -> None:
    env = otel_env(receiver, tool)
    out = run([sys.executable, "examples/processor_in_code.py"], env)
    task_ids = [json.loads(line) for line in out.splitlines()]
    assert len(task_ids) == 2
    spans = receiver.wait_for_spans(2 * 5 + 5)
    rollouts = by_rollout(spans)
    assert len(rollouts) == 3
    for ids in task_ids:
        mine = rollouts[ids["rollout_id"]]
        assert sorted(s["name"] for s in mine) == sorted(
            [
                "GET",
                "plan",
                semconv.ANNOTATION_SPAN,
                semconv.ROLLOUT_SPAN,
                semconv.ROLLOUT_START_SPAN,
            ]
        )
        assert {s["attempt_id"] for s in mine} == {ids["attempt_id"]}
    records = {r["rollout_id"]: r for r in receiver.rollouts()}
    assert [records[i["rollout_id"]]["input"] for i in task_ids] == [
        {"task": "2+2"},
        {"task": "3*3"},
    ]
    (evaluated,) = set(rollouts) - {i["rollout_id"] for i in task_ids}
    assert records[evaluated]["mode"] == "val"
    assert "evaluate" in {s["name"] for s in rollouts[evaluated]}
    validate(receiver, spans)


def test_example_resource_attributes_for_any_language(receiver: ReceiverProcess, tool: str) -> None:
    attributes = "agentlightning.rollout_id=ro-0123456789ab,agentlightning.attempt_id=at-01234567"
    env = otel_env(receiver, tool, OTEL_RESOURCE_ATTRIBUTES=attributes)
    command = [
        str(BIN / "opentelemetry-instrument"),
        sys.executable,
        "examples/resource_attributes_agent.py",
    ]
    run(command, env)
    spans = receiver.wait_for_spans(2)
    assert sorted(s["name"] for s in spans) == ["GET", "answer"]
    assert {(s["rollout_id"], s["attempt_id"]) for s in spans} == {
        ("ro-0123456789ab", "at-01234567")
    }
    validate(receiver, spans)
