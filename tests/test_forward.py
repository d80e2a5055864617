"""End to end: receivers forwarding into a real LightningStore server (``agl store`` 0.3.0).

One server runs for the module (importing agentlightning takes seconds); the restart test stops
and starts it, and every test works in rollouts of its own.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest as PB2ExportTraceServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceResponse as PB2ExportTraceServiceResponse,
)

from lightning_otlp import ids as ids_module
from lightning_otlp.forward.status import store_status
from lightning_otlp.forward.store import ForwardingStore
from lightning_otlp.receiver.route import RoutingConfig, route

from .payloads import GENAI_CONTENT, genai_request, make_request, make_span
from .support import ReceiverProcess, agl_python, free_port, node_script, validate_with_agl

pytestmark = [pytest.mark.e2e, pytest.mark.agl]

PROTOBUF = {"content-type": "application/x-protobuf"}


class AglServer:
    """``agl store`` (the upstream in-memory LightningStore server) in a subprocess."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def start(self, timeout: float = 90.0) -> None:
        agl = Path(agl_python()).parent / "agl"
        log = open(self.log_path, "ab")  # kept open for the process's life
        self.proc = subprocess.Popen(
            [str(agl), "store", "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=log,
            stderr=log,
            env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
            try:
                if self.http.get("/v1/agl/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"agl store did not start:\n{self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def forward_url(self, outbox: Path, **options: Any) -> str:
        query = "&".join(f"{k}={v}" for k, v in {"max_backoff": 0.5, **options}.items())
        return f"agl+http://127.0.0.1:{self.port}?outbox={outbox}&{query}"

    # REST reads and writes, as a runner or trainer would make them.
    def create_rollout(self, **body: Any) -> dict[str, Any]:
        response = self.http.post("/v1/agl/rollouts", json={"input": None, **body})
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    def rollouts(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.http.get("/v1/agl/rollouts").json()["items"]
        return items

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        found = self.http.get("/v1/agl/rollouts", params={"rollout_id_in": [rollout_id]}).json()
        assert found["items"], f"server has no rollout {rollout_id}"
        item: dict[str, Any] = found["items"][0]
        return item

    def attempts(self, rollout_id: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.http.get(
            f"/v1/agl/rollouts/{rollout_id}/attempts"
        ).json()["items"]
        return items

    def spans(self, rollout_id: str, attempt_id: str | None = None) -> list[dict[str, Any]]:
        params = {"rollout_id": rollout_id}
        if attempt_id is not None:
            params["attempt_id"] = attempt_id
        response = self.http.get("/v1/agl/spans", params=params)
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    def linked(self, local_rollout_id: str) -> dict[str, Any]:
        """The server rollout the forwarder created for a receiver's rollout."""
        found = [
            r
            for r in self.rollouts()
            if ((r.get("metadata") or {}).get("lightning_otlp") or {}).get("rollout_id")
            == local_rollout_id
        ]
        assert len(found) == 1, f"{len(found)} server rollouts for {local_rollout_id}"
        return found[0]


@pytest.fixture(scope="module")
def agl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AglServer]:
    server = AglServer(tmp_path_factory.mktemp("agl") / "agl-store.log")
    server.start()
    yield server
    server.kill()
    server.http.close()


@pytest.fixture
def forwarding_receiver(
    tmp_path: Path, agl: AglServer
) -> Iterator[Callable[..., tuple[ReceiverProcess, str]]]:
    """Start receivers whose store is the server, each with an outbox in tmp_path."""
    started: list[ReceiverProcess] = []

    def start(
        outbox: str = "outbox.db", flags: tuple[str, ...] = (), **options: Any
    ) -> tuple[ReceiverProcess, str]:
        url = agl.forward_url(tmp_path / outbox, **options)
        proc = ReceiverProcess(tmp_path / f"{outbox}.receiver", "--store", url, *flags).start()
        started.append(proc)
        return proc, url

    yield start
    for proc in started:
        proc.stop()


def wait_for(
    condition: Callable[[], Any], what: str, timeout: float = 60.0, interval: float = 0.05
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def drained(url: str, forwarded: int, timeout: float = 90.0) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        report = store_status(url, probe=False)
        done = report["pending_spans"] == 0 and report["forwarded_spans"] >= forwarded
        return report if done else None

    report: dict[str, Any] = wait_for(check, f"{forwarded} spans forwarded", timeout, 0.1)
    return report


def cli_status(url: str) -> dict[str, Any]:
    """``lightning-otlp status --json``, as an operator would run it."""
    out = subprocess.run(
        [sys.executable, "-m", "lightning_otlp", "status", "--store", url, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    report: dict[str, Any] = json.loads(out.stdout)
    return report


def local_rollouts(url: str) -> list[str]:
    """The receiver's own rollout ids, read from its outbox."""
    path = url.split("outbox=")[1].split("&")[0]
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT rollout_id FROM rollouts ORDER BY rowid")]


def post(receiver: ReceiverProcess, request: PB2ExportTraceServiceRequest) -> httpx.Response:
    return httpx.post(
        receiver.traces_url, content=request.SerializeToString(), headers=PROTOBUF, timeout=30
    )


def identities(spans: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(s["trace_id"], s["span_id"]) for s in spans]


def sent_identities(request: PB2ExportTraceServiceRequest) -> set[tuple[str, str]]:
    return {
        (span.trace_id.hex(), span.span_id.hex())
        for rs in request.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    }


def assert_in_order(spans: list[dict[str, Any]]) -> None:
    """One attempt's spans: distinct sequence ids, increasing with start time."""
    seqs = [s["sequence_id"] for s in spans]
    assert len(set(seqs)) == len(seqs)
    by_seq = sorted(spans, key=lambda s: s["sequence_id"])
    starts = [s["start_time"] for s in by_seq]
    assert starts == sorted(starts)


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
        wait_for(lambda: store.status()["forwarded_spans"] == 20, "20 spans forwarded")
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
        wait_for(
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
        wait_for(lambda: store.status()["forwarded_spans"] == 5, "the bound spans forwarded")
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
        wait_for(lambda: store.status()["forwarded_spans"] == 9, "the bound trace forwarded")
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
        wait_for(lambda: store.status()["forwarded_spans"] == 10, "the orphan forwarded")
        server = agl.linked(ids_module.rollout_id_for_trace(orphan.trace_id.hex()))
        assert [s["name"] for s in agl.spans(server["rollout_id"])] == ["orphan"]
    finally:
        store.close()


# -- faults ----------------------------------------------------------------------------------


def server_spans(agl: AglServer, rollout_ids: set[str]) -> list[dict[str, Any]]:
    """Every span the server holds for the given server rollouts."""
    return [span for rid in sorted(rollout_ids) for span in agl.spans(rid)]


def test_server_restart_mid_stream_delivers_the_rest_exactly_once(
    forwarding_receiver: Callable[..., tuple[ReceiverProcess, str]], agl: AglServer
) -> None:
    receiver, url = forwarding_receiver(batch_spans=500)
    requests = [genai_request(500, rollouts=4, seed=2000 + i) for i in range(43)]
    # New spans for the first rollouts, mapped (and then forgotten by the server) before it stops.
    requests.append(genai_request(500, rollouts=4, seed=2000))
    sent: set[tuple[str, str]] = set().union(*(sent_identities(r) for r in requests))
    assert len(sent) == 22_000
    for request in requests[:20]:
        assert post(receiver, request).status_code == 200
    wait_for(lambda: store_status(url, probe=False)["forwarded_spans"] > 0, "first spans forwarded")

    agl.kill()
    killed_at = time.time()
    # Keep the stream going: the receiver keeps acknowledging into its outbox.
    for request in requests[20:30]:
        assert post(receiver, request).status_code == 200
    down = wait_for(
        lambda: (
            (r := store_status(url, probe=False))["last_error_time"]
            and r["last_error_time"] > killed_at
            and r
        ),
        "the forwarder to notice the server is gone",
    )
    delivered_before = down["forwarded_spans"]
    assert 0 < delivered_before < 22_000
    assert down["pending_spans"] > 0
    assert cli_status(url)["server_reachable"] is False

    agl.start()
    for request in requests[30:]:
        assert post(receiver, request).status_code == 200
    report = drained(url, 22_000)

    # The restarted server forgot everything; every span not delivered before reached it once.
    linked = {
        r["rollout_id"]
        for r in agl.rollouts()
        if ((r.get("metadata") or {}).get("lightning_otlp") or {}).get("rollout_id", "")
        in {f"ro-{(2000 + i) * 31 + j:012x}" for i in range(43) for j in range(4)}
    }
    spans = server_spans(agl, linked)
    got = identities(spans)
    assert len(got) == len(set(got)), "duplicates on the server"
    assert set(got) <= sent
    assert len(got) == 22_000 - delivered_before
    final = cli_status(url)
    assert final["forwarded_spans"] == 22_000 == report["forwarded_spans"]
    assert final["pending_spans"] == 0 and final["oldest_pending_age_seconds"] is None
    assert final["rollouts_recreated"] > 0
    assert final["server_reachable"] is True
    for rid in linked:
        by_attempt: dict[str, list[dict[str, Any]]] = {}
        for span in agl.spans(rid):
            by_attempt.setdefault(span["attempt_id"], []).append(span)
        for attempt_spans in by_attempt.values():
            seqs = [s["sequence_id"] for s in attempt_spans]
            assert len(seqs) == len(set(seqs))
    receiver.stop()


def test_receiver_killed_while_forwarding_delivers_every_acknowledged_span_once(
    forwarding_receiver: Callable[..., tuple[ReceiverProcess, str]], agl: AglServer
) -> None:
    receiver, url = forwarding_receiver(batch_spans=500)
    requests = [genai_request(500, rollouts=4, seed=3000 + i) for i in range(40)]
    sent: set[tuple[str, str]] = set().union(*(sent_identities(r) for r in requests))
    for request in requests:
        assert post(receiver, request).status_code == 200  # acknowledged: durable
    wait_for(lambda: store_status(url, probe=False)["forwarded_spans"] > 0, "forwarding under way")
    receiver.kill()
    killed = store_status(url, probe=False)
    assert killed["pending_spans"] > 0, "the kill should land while spans are pending"
    assert killed["oldest_pending_age_seconds"] is not None

    forwarding_receiver()  # same outbox, same server
    drained(url, 20_000)
    linked = {
        r["rollout_id"]
        for r in agl.rollouts()
        if ((r.get("metadata") or {}).get("lightning_otlp") or {}).get("rollout_id", "")
        in {f"ro-{(3000 + i) * 31 + j:012x}" for i in range(40) for j in range(4)}
    }
    assert len(linked) == 160  # one server rollout per receiver rollout, even across the kill
    got = identities(server_spans(agl, linked))
    assert len(got) == len(set(got)), "duplicates on the server"
    assert set(got) == sent


def test_full_outbox_answers_retryable_and_resent_spans_are_delivered(
    forwarding_receiver: Callable[..., tuple[ReceiverProcess, str]], agl: AglServer
) -> None:
    receiver, url = forwarding_receiver(max_outbox_spans=1000)
    first, second = genai_request(600, seed=4000), genai_request(600, seed=4001)
    agl.signal(signal.SIGSTOP)  # the server stops answering; connections hang
    try:
        assert post(receiver, first).status_code == 200
        refused = post(receiver, second)
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) >= 1
        with grpc.insecure_channel(receiver.grpc_target) as channel:
            export = channel.unary_unary(
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                request_serializer=PB2ExportTraceServiceRequest.SerializeToString,
                response_deserializer=PB2ExportTraceServiceResponse.FromString,
            )
            with pytest.raises(grpc.RpcError) as failed:
                export(second, timeout=10)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        full = cli_status(url)
        assert full["pending_spans"] == 600 and full["forwarded_spans"] == 0
    finally:
        agl.signal(signal.SIGCONT)
    drained(url, 600)
    assert post(receiver, second).status_code == 200  # the client's retry
    drained(url, 1200)
    local = local_rollouts(url)
    linked = {agl.linked(rid)["rollout_id"] for rid in local}
    got = identities(server_spans(agl, linked))
    assert len(got) == len(set(got)) == 1200
    assert set(got) == sent_identities(first) | sent_identities(second)


def test_bindings_of_delivered_traces_survive_a_restart(
    forwarding_receiver: Callable[..., tuple[ReceiverProcess, str]], agl: AglServer
) -> None:
    """The runner's spans were delivered (and left the outbox) before the receiver restarted;
    the agent's spans of the same trace that come after still join the runner's rollout."""
    runner = agl.create_rollout(input={"task": "restart"})
    ids = {
        "agentlightning.rollout_id": runner["rollout_id"],
        "agentlightning.attempt_id": runner["attempt"]["attempt_id"],
    }
    receiver, url = forwarding_receiver("restart.db")
    marker = make_span("agentlightning.rollout.start", attributes=ids)
    assert post(receiver, make_request([marker])).status_code == 200
    drained(url, 1)
    assert receiver.stop() == 0

    receiver, url = forwarding_receiver("restart.db")
    agent = make_span("agent", trace_id=marker.trace_id, parent_id=marker.span_id)
    assert post(receiver, make_request([agent])).status_code == 200
    drained(url, 2, timeout=30)  # well inside the 600 s window: it was not held
    names = sorted(s["name"] for s in agl.spans(runner["rollout_id"]))
    assert names == ["agent", "agentlightning.rollout.start"]


def test_a_span_the_server_refuses_for_good_is_set_aside(tmp_path: Path, agl: AglServer) -> None:
    """A batch the server answers 4xx is sent again in halves; the one span it refuses is kept
    as rejected, and every other span is delivered."""
    outbox = tmp_path / "poison.db"
    store = ForwardingStore(agl.url, str(outbox), forward=False)
    store.open()
    store.write(route(genai_request(10, rollouts=1, seed=7300), RoutingConfig()))
    store.close()
    with sqlite3.connect(outbox) as conn:  # one stored span's bytes no longer parse
        conn.execute(
            "UPDATE spans SET span = x'ffffffff'"
            " WHERE rowid = (SELECT rowid FROM spans ORDER BY rowid LIMIT 1 OFFSET 6)"
        )
    store = ForwardingStore(agl.url, str(outbox), max_backoff=0.5)
    store.open()
    try:
        wait_for(
            lambda: store.status()["pending_spans"] == 0 and store.status()["rejected_spans"] == 1,
            "nine delivered, one set aside",
        )
        report = store.status()
        assert report["forwarded_spans"] == 9
        assert "refused for good" in report["last_error"]
        local = store.rollouts().__next__()["rollout_id"]
        delivered = agl.spans(agl.linked(local)["rollout_id"])
        assert len(validate_with_agl("Span", delivered)) == 9
    finally:
        store.close()
    with sqlite3.connect(outbox) as conn:
        assert conn.execute(
            "SELECT COUNT(*), MIN(length(span)) FROM forward_rejected"
        ).fetchone() == (1, 4)
