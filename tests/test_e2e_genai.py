"""Trainable spans end to end: real instrumentations, a real receiver, Agent Lightning's adapter.

Each agent (tests/genai/agent.py on the real OpenAI SDK with one real instrumentation, or
tests/node/vercel_agent.mjs on the Vercel AI SDK, with generateText or streamText) calls the fake
vLLM-like model server inside a rollout with rewards, exporting to ``lightning-otlp serve``. The
records, read back through the CLI, must give under agentlightning 0.3.0's
``TracerTraceToTriplet()`` (default arguments) one triplet per model call, with prompt and
response text, the reward on the right call, and token ids where the source kept them
(OpenInference's raw response).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lightning_otlp import ids

from .genai.fake_model import FakeModelServer
from .genai.triplets import adapt
from .support import ROOT, ReceiverProcess, free_port, node_script

pytestmark = [pytest.mark.e2e, pytest.mark.genai, pytest.mark.agl]

AGENT = ROOT / "tests" / "genai" / "agent.py"


def genai_python() -> str:
    """The interpreter of the cached GenAI environment (``make genai-env``)."""
    path = os.environ.get("GENAI_PYTHON") or str(ROOT / ".cache" / "genai-py" / "bin" / "python")
    if not Path(path).exists():
        raise RuntimeError(f"GenAI environment missing at {path}: run `make genai-env`")
    return path


@pytest.fixture(scope="module")
def model() -> Iterator[FakeModelServer]:
    with FakeModelServer() as server:
        yield server


def run_agent(instrumentation: str, model_url: str, endpoint: str, *flags: str) -> str:
    done = subprocess.run(
        [genai_python(), str(AGENT), instrumentation, "--model-url", model_url]
        + ["--endpoint", endpoint, *flags],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rollout_id: str = json.loads(done.stdout.strip().splitlines()[-1])["rollout_id"]
    return rollout_id


def run_vercel_agent(model_url: str, endpoint: str, *flags: str) -> tuple[str, dict[str, Any]]:
    """tests/node/vercel_agent.mjs in a new rollout: its id and what the agent printed."""
    rollout_id = ids.new_rollout_id()
    done = subprocess.run(
        ["node", str(node_script("vercel_agent.mjs")), "--model-url", model_url]
        + ["--endpoint", endpoint, *flags],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OTEL_RESOURCE_ATTRIBUTES": f"agentlightning.rollout_id={rollout_id}"},
    )
    assert done.returncode == 0, done.stderr
    printed: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return rollout_id, printed


def cli_spans(receiver: ReceiverProcess) -> dict[str, list[dict[str, Any]]]:
    """``lightning-otlp spans`` as a user would run it, grouped by rollout."""
    done = subprocess.run(
        [sys.executable, "-m", "lightning_otlp", "spans", "--store", receiver.store_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out: dict[str, list[dict[str, Any]]] = {}
    for line in done.stdout.splitlines():
        record = json.loads(line)
        out.setdefault(record["rollout_id"], []).append(record)
    return out


def check_rollout(got: dict[str, Any], *, rewards: list[float | None], token_ids: bool) -> None:
    triplets = got["triplets"]
    assert len(triplets) == 2, triplets
    first, second = triplets
    assert "What is the weather in Paris?" in first["prompt_text"]
    assert first["tool_calls"] == ["get_weather"]
    assert second["response_text"][0].startswith("Answer ")
    assert [t["reward"] for t in triplets] == rewards
    for t in triplets:
        assert bool(t["prompt_token_ids"]) is token_ids
        assert bool(t["response_token_ids"]) is token_ids


@pytest.mark.node
def test_every_instrumentation_gives_one_triplet_per_call_with_its_reward(
    model: FakeModelServer, start_receiver: Callable[..., ReceiverProcess]
) -> None:
    receiver = start_receiver()
    rollouts: dict[str, str] = {}
    for instrumentation, protocol in [
        ("openai-v2", "http"),
        ("openai-v2", "grpc"),
        ("openai-v2-span", "http"),
        ("openai-v2-event", "grpc"),
        ("openllmetry", "http"),
        ("openinference", "grpc"),
    ]:
        endpoint = receiver.http_url if protocol == "http" else "http://" + receiver.grpc_target
        rollout_id = run_agent(instrumentation, model.base_url, endpoint, "--protocol", protocol)
        rollouts[rollout_id] = f"{instrumentation}/{protocol}"
    vercel_rollout, _ = run_vercel_agent(model.base_url, receiver.http_url)
    rollouts[vercel_rollout] = "vercel"

    records = cli_spans(receiver)
    assert set(records) == set(rollouts)
    result = adapt(records)
    for rollout_id, label in rollouts.items():
        if label == "vercel":
            # The Node.js agent rewards only its final answer.
            check_rollout(result[rollout_id], rewards=[None, 1.0], token_ids=False)
        else:
            check_rollout(
                result[rollout_id],
                rewards=[0.5, 1.0],
                token_ids=label.startswith("openinference"),
            )


@pytest.mark.node
def test_vercel_streamed_calls_give_one_triplet_each_with_the_whole_text(
    start_receiver: Callable[..., ReceiverProcess],
) -> None:
    """streamText: each ai.streamText.doStream is one call, the outer ai.streamText none."""
    receiver = start_receiver()
    with FakeModelServer() as server:
        rollout_id, printed = run_vercel_agent(
            server.base_url, receiver.http_url, "--call", "stream"
        )
        requests, answers = server.model.requests, server.model.answers
    # The agent read the answer in pieces, and every model call was a streamed one.
    assert len(printed["deltas"]) > 1
    assert "".join(printed["deltas"]) == printed["text"]
    assert len(requests) == 2 and all(r.get("stream") is True for r in requests)

    records = cli_spans(receiver)[rollout_id]
    original = [r["attributes"].get("lightning_otlp.original_name", r["name"]) for r in records]
    assert original.count("ai.streamText") == 1
    assert original.count("ai.streamText.doStream") == len(requests)

    triplets = adapt({rollout_id: records})[rollout_id]["triplets"]
    assert len(triplets) == len(requests), triplets
    first, second = triplets
    assert "What is the weather in Paris?" in first["prompt_text"]
    assert first["tool_calls"] == ["get_weather"]
    # The tool's result is in the second call's prompt; its answer is the whole streamed text.
    assert "Sunny, 21 C in Paris" in second["prompt_text"]
    assert second["response_text"] == [printed["text"]]
    assert printed["text"] == answers[1]["choices"][0]["message"]["content"]
    assert [t["response_id"] for t in triplets] == [a["id"] for a in answers]
    # The agent rewards its final answer, after the stream ended: the second call's.
    assert [t["reward"] for t in triplets] == [None, 1.0]


def test_content_in_log_records_survives_order_and_restart(
    model: FakeModelServer, tmp_path: Path
) -> None:
    """openai-v2's default mode: message content only in log records, over both transports,
    logs before or after their spans, and the receiver killed (-9) in between."""
    grpc, http = free_port(), free_port()
    flags = ("--grpc", f"127.0.0.1:{grpc}", "--http", f"127.0.0.1:{http}")
    receiver = ReceiverProcess(tmp_path / "receiver.db", *flags).start()
    rollouts = []
    try:
        for protocol in ("grpc", "http"):
            for order in ("--logs-first", "--spans-first"):
                endpoint = f"http://127.0.0.1:{http if protocol == 'http' else grpc}"
                agent = subprocess.Popen(
                    [genai_python(), str(AGENT), "openai-v2", "--model-url", model.base_url]
                    + ["--endpoint", endpoint, "--protocol", protocol, order, "--pause"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                assert agent.stdout is not None and agent.stdin is not None
                assert agent.stdout.readline().strip() == "paused"
                receiver.kill()  # the first signal was acknowledged, so it is on disk
                receiver.start()
                agent.stdin.write("\n")
                agent.stdin.flush()
                out, err = agent.communicate(timeout=60)
                assert agent.returncode == 0, err
                rollouts.append(json.loads(out.strip().splitlines()[-1])["rollout_id"])
        records = cli_spans(receiver)
    finally:
        receiver.stop()
    result = adapt({r: records[r] for r in rollouts})
    for rollout_id in rollouts:
        check_rollout(result[rollout_id], rewards=[0.5, 1.0], token_ids=False)


def test_forwarded_into_agl_store_the_server_gives_the_same_triplets(
    model: FakeModelServer, tmp_path: Path
) -> None:
    """Through ``--store agl+http://…`` into a real ``agl store``, read back with its REST API,
    as a runner would: its rollouts made on the server, their ids passed to the agents."""
    from bench.common import agl_store
    from lightning_otlp.forward.status import store_status

    with agl_store(tmp_path / "agl.log") as base, httpx.Client(base_url=base, timeout=30) as agl:
        url = f"agl+{base}?outbox={tmp_path / 'outbox.db'}&max_backoff=0.5"
        receiver = ReceiverProcess(tmp_path / "receiver.db", "--store", url).start()
        try:
            runs = {}
            # OpenInference: token ids; openai-v2: content in log records, sent first here
            # (the forwarder sends a span as it is when delivered).
            for instrumentation, flags in [("openinference", ()), ("openai-v2", ("--logs-first",))]:
                created = agl.post("/v1/agl/rollouts", json={"input": {"task": "weather"}})
                assert created.status_code == 201, created.text
                rollout = created.json()
                run_agent(
                    instrumentation,
                    model.base_url,
                    receiver.http_url,
                    "--rollout-id",
                    rollout["rollout_id"],
                    "--attempt-id",
                    rollout["attempt"]["attempt_id"],
                    *flags,
                )
                runs[rollout["rollout_id"]] = instrumentation
            deadline = time.monotonic() + 90
            while store_status(url, probe=False)["pending_spans"] and time.monotonic() < deadline:
                time.sleep(0.2)
            assert store_status(url, probe=False)["pending_spans"] == 0
        finally:
            assert receiver.stop() == 0, receiver.log()
        records = {
            rollout_id: agl.get("/v1/agl/spans", params={"rollout_id": rollout_id}).json()["items"]
            for rollout_id in runs
        }
    result = adapt(records)
    for rollout_id, instrumentation in runs.items():
        check_rollout(
            result[rollout_id],
            rewards=[0.5, 1.0],
            token_ids=instrumentation == "openinference",
        )


# The versions the docs' table names for openai-v2's three modes: openai-v2 2.4b0 (the latest)
# needs util-genai 0.4b0 for them (1.1b0 rejects ``true``; 1.2b0 and later break its import).
OPENAI_V2_VERSIONS = {
    "opentelemetry-instrumentation-openai-v2": "2.4b0",
    "opentelemetry-util-genai": "0.4b0",
}


@pytest.mark.parametrize(
    ("instrumentation", "on_span", "log_events"),
    [
        # OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true: one log record per message.
        ("openai-v2", False, {"gen_ai.system.message", "gen_ai.user.message", "gen_ai.choice"}),
        # gen_ai_latest_experimental + SPAN_ONLY: JSON attributes on the span, no log record.
        ("openai-v2-span", True, set()),
        # gen_ai_latest_experimental + EVENT_ONLY: one operation-details log record per call.
        ("openai-v2-event", False, {"gen_ai.client.inference.operation.details"}),
    ],
)
def test_each_openai_v2_mode_with_the_versions_it_names(
    model: FakeModelServer,
    tmp_path: Path,
    instrumentation: str,
    on_span: bool,
    log_events: set[str],
) -> None:
    versions = subprocess.run(
        [
            genai_python(),
            "-c",
            "import json, sys; from importlib.metadata import version; "
            "print(json.dumps({p: version(p) for p in sys.argv[1:]}))",
            *OPENAI_V2_VERSIONS,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(versions.stdout) == OPENAI_V2_VERSIONS
    out = tmp_path / "recorded.json"
    done = subprocess.run(
        [genai_python(), str(AGENT), instrumentation, "--model-url", model.base_url]
        + ["--record", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    recorded = json.loads(out.read_text())
    chats = [
        {a["key"] for a in span.get("attributes", [])}
        for resource in recorded["traces"]["resourceSpans"]
        for scope in resource["scopeSpans"]
        for span in scope["spans"]
        if span["name"].startswith("chat ")
    ]
    assert len(chats) == 2
    for keys in chats:
        assert ("gen_ai.input.messages" in keys and "gen_ai.output.messages" in keys) is on_span
    names = {
        record.get("eventName")
        or next(a["value"]["stringValue"] for a in record["attributes"] if a["key"] == "event.name")
        for resource in (recorded["logs"] or {}).get("resourceLogs", [])
        for scope in resource["scopeLogs"]
        for record in scope["logRecords"]
    }
    assert log_events <= names and (names == set()) is (not log_events), names
