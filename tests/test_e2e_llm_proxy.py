"""The token-id path for a TypeScript agent: Agent Lightning's LLM proxy plus lightning-otlp.

Real pieces only: agentlightning 0.3.0's ``LLMProxy`` (LiteLLM) in front of the fake vLLM-like
model server, asking it for token ids; the example agent (examples/typescript-agent/
proxy_agent.ts, Vercel AI SDK and the stock OpenTelemetry SDK) calling its model through the
proxy endpoint of its rollout and reporting its spans and one reward per call to lightning-otlp;
and, as the trainer, ``LightningStoreClient.query_spans`` with agentlightning's own adapters.

Two topologies: lightning-otlp is the LightningStore (the proxy's store is a client of its
API), or lightning-otlp forwards into ``agl store`` (the proxy's store is that server).
``TracerTraceToTriplet()`` must give one triplet per model call, carrying the token ids the
model returned and the reward of that call. ``LlmProxyTraceToTriplet`` reads the proxy's own
spans and places rewards by sequence id only: that holds where lightning-otlp issues every
sequence id (start times in microseconds, and the proxy's asked for at call time). Forwarding
into another server, the proxy's ids come from that server's counter (1, 2, ...) while the
agent's spans keep lightning-otlp's, far above, so only its token ids are checked there.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .genai.fake_model import FakeModelServer
from .support import NODE_DIR, ROOT, AglStore, ReceiverProcess, agl_python, node_script, run_in_agl

pytestmark = [pytest.mark.e2e, pytest.mark.agl, pytest.mark.node]

PROXY = ROOT / "tests" / "clients" / "llm_proxy.py"
AGENT_DIR = ROOT / "examples" / "typescript-agent"
MODEL = "fake-model"
MASTER_KEY = "sk-lightning-otlp-test-0123456789abcdef"
# The fake model echoes the question: the first task earns reward 1, the second 0.
TASKS = [
    {"question": "Please say hello", "answer": "hello"},
    {"question": "What is 6 x 7?", "answer": "42"},
]
# Per rollout, once everything has arrived: the proxy's span with the raw response, and the
# agent's model calls (in Agent Lightning's shape), their outer spans and rewards.
EXPECTED = {
    "raw_gen_ai_request": len(TASKS),
    "openai.chat.completion": len(TASKS),
    "ai.generateText": len(TASKS),
    "agentlightning.annotation": len(TASKS),
}

# The trainer's side: spans read back with the store client, then both stock adapters.
_TRAINER = r"""
import asyncio, json, os, sys, time
from agentlightning.adapter.triplet import LlmProxyTraceToTriplet, TracerTraceToTriplet
from agentlightning.store.client_server import LightningStoreClient

request = json.load(sys.stdin)

def triplets(adapter, spans):
    return [
        {
            "prompt": t.prompt.get("token_ids"),
            "response": t.response.get("token_ids"),
            "reward": t.reward,
            "response_id": t.metadata.get("response_id"),
        }
        for t in adapter.adapt(spans)
    ]

async def main():
    store = LightningStoreClient(request["store"])
    deadline = time.monotonic() + 120
    while True:
        spans = await store.query_spans(request["rollout_id"])
        names = [s.name for s in spans]
        if all(names.count(k) >= v for k, v in request["expected"].items()):
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"spans missing: {sorted(names)}")
        await asyncio.sleep(0.2)
    out = {
        "spans": [[s.name, s.trace_id, s.span_id, s.sequence_id] for s in spans],
        "tracer": triplets(TracerTraceToTriplet(), spans),
        "proxy": triplets(LlmProxyTraceToTriplet(), spans),
    }
    await store.close()
    print(json.dumps(out), flush=True)

asyncio.run(main())
os._exit(0)  # agentlightning's imports leave threads that can hold the exit up
"""


class LlmProxyProcess:
    """tests/clients/llm_proxy.py: the proxy, and a runner starting rollouts in its store."""

    def __init__(self, store_url: str, model_url: str, log_path: Path) -> None:
        env = {
            **os.environ,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            # agentlightning 0.3.0 points its exporter at the store by changing the exporter's
            # endpoint after construction, which opentelemetry-exporter-otlp-proto-http 1.45
            # ignores: without this its spans go to localhost:4318.
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": store_url + "/v1/traces",
        }
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(
                [agl_python(), str(PROXY), store_url, model_url, MODEL, MASTER_KEY],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=env,
            )

    def start_rollout(self, task: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(task) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the LLM proxy ended:\n{self.log_path.read_text()[-5000:]}"
        reply: dict[str, Any] = json.loads(line)
        return reply

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # the proxy stops itself and its server process
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def model() -> Iterator[FakeModelServer]:
    with FakeModelServer() as server:
        yield server


@pytest.fixture(params=["lightning-otlp", "agl-store"])
def topology(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    start_receiver: Callable[..., ReceiverProcess],
) -> Iterator[tuple[str, ReceiverProcess]]:
    """The store the proxy and the trainer use, and the receiver the agent reports to."""
    if request.param == "lightning-otlp":
        receiver = start_receiver()
        yield receiver.http_url, receiver
        return
    agl = AglStore(tmp_path / "agl.log").start()
    try:
        forward = f"agl+http://127.0.0.1:{agl.port}?outbox={tmp_path / 'outbox.db'}"
        yield agl.url, start_receiver("--store", forward)
    finally:
        agl.stop()


def run_agent(receiver: ReceiverProcess, rollout: dict[str, Any]) -> None:
    node_script("agent.js")  # checks the Node.js packages are installed
    env = {
        **os.environ,
        "NODE_PATH": str(NODE_DIR / "node_modules"),
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_url,
        "OTEL_RESOURCE_ATTRIBUTES": (
            f"agentlightning.rollout_id={rollout['rollout_id']},"
            f"agentlightning.attempt_id={rollout['attempt_id']}"
        ),
        "AGL_PROXY_ENDPOINT": rollout["resource"]["endpoint"],
        "AGL_PROXY_MODEL": rollout["resource"]["model"],
        "AGL_PROXY_KEY": MASTER_KEY,
    }
    done = subprocess.run(
        [str(NODE_DIR / "node_modules" / ".bin" / "tsx"), "proxy_agent.ts", json.dumps(TASKS)],
        cwd=AGENT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_typescript_agent_gets_token_ids_through_the_llm_proxy(
    tmp_path: Path, model: FakeModelServer, topology: tuple[str, ReceiverProcess]
) -> None:
    store_url, receiver = topology
    proxy = LlmProxyProcess(store_url, model.base_url, tmp_path / "proxy.log")
    try:
        rollout = proxy.start_rollout({"tasks": TASKS})
        assert rollout["resource"]["endpoint"].endswith(
            f"/rollout/{rollout['rollout_id']}/attempt/{rollout['attempt_id']}"
        )
        run_agent(receiver, rollout)
        got = run_in_agl(
            _TRAINER,
            {"store": store_url, "rollout_id": rollout["rollout_id"], "expected": EXPECTED},
            timeout=240,
        )
    finally:
        proxy.stop()

    # The proxy asked the model for token ids, once per call.
    assert [r.get("return_token_ids") for r in model.model.requests] == [True] * len(TASKS)
    answers = {a["id"]: a for a in model.model.answers}
    expected_reward = {}
    for task, answer in zip(TASKS, model.model.answers, strict=True):
        text = answer["choices"][0]["message"]["content"]
        expected_reward[answer["id"]] = 1.0 if task["answer"] in text else 0.0
    assert sorted(expected_reward.values()) == [0.0, 1.0]  # so a misplaced reward shows

    # Every span once: the proxy's, and the agent's through lightning-otlp.
    keys = [(trace_id, span_id) for _, trace_id, span_id, _ in got["spans"]]
    assert len(set(keys)) == len(keys), got["spans"]
    names = Counter(name for name, *_ in got["spans"])
    assert {k: names[k] for k in EXPECTED} == EXPECTED, names

    # The trainer's default adapter: one triplet per call, the model's token ids, its reward.
    triplets = got["tracer"]
    assert sorted(t["response_id"] for t in triplets) == sorted(answers), triplets
    for t in triplets:
        answer = answers[t["response_id"]]
        assert t["prompt"] == answer["prompt_token_ids"] and t["prompt"]
        assert t["response"] == answer["choices"][0]["token_ids"] and t["response"]
        assert t["reward"] == expected_reward[t["response_id"]], triplets

    # The proxy's own spans, as LlmProxyTraceToTriplet reads them.
    proxied = got["proxy"]
    assert sorted(t["response_id"] for t in proxied) == sorted(answers), proxied
    for t in proxied:
        answer = answers[t["response_id"]]
        assert t["prompt"] == answer["prompt_token_ids"]
        assert t["response"] == answer["choices"][0]["token_ids"]
        if store_url == receiver.http_url:  # one store issued every sequence id
            assert t["reward"] == expected_reward[t["response_id"]], proxied
