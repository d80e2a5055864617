"""Trainable spans from agent frameworks end to end: real packages, a real receiver, Agent
Lightning's own client and adapter.

Each agent (tests/genai/framework_agent.py, in the framework's cached env) makes three model
calls against the fake vLLM-like server inside ``rollout()``: one answered with a tool call, one
carrying the tool's result, one plain, with a reward after each. It exports over OTLP/HTTP to
``lightning-otlp serve``; agentlightning 0.3.0's ``LightningStoreClient`` reads the spans back
from the receiver's API and ``TracerTraceToTriplet()`` (default arguments) must make three
complete triplets, each reward on its own call, token ids where the framework recorded them.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .genai.envs import FRAMEWORK_AGENT, framework_env, framework_python
from .genai.fake_model import FakeModelServer
from .genai.triplets import adapt_from_server
from .support import ReceiverProcess
from .test_e2e_genai import cli_spans
from .test_translate import check_framework_triplets

pytestmark = [pytest.mark.e2e, pytest.mark.genai, pytest.mark.agl]

FRAMEWORKS = [
    "litellm",
    "litellm-request-span",
    "litellm-semconv",
    *[f"pydantic-ai-v{v}" for v in range(2, 7)],
    "openlit",
]
# LiteLLM's raw request span keeps a vLLM server's token ids (not in its semconv mode).
WITH_TOKEN_IDS = {"litellm", "litellm-request-span"}


@pytest.fixture(scope="module")
def model() -> Iterator[FakeModelServer]:
    with FakeModelServer() as server:
        yield server


def run_framework_agent(framework: str, model_url: str, endpoint: str) -> str:
    done = subprocess.run(
        [framework_python(framework), str(FRAMEWORK_AGENT), framework]
        + ["--model-url", model_url, "--endpoint", endpoint],
        capture_output=True,
        text=True,
        timeout=180,
        env=framework_env(),
    )
    assert done.returncode == 0, done.stderr
    rollout_id: str = json.loads(done.stdout.strip().splitlines()[-1])["rollout_id"]
    return rollout_id


def test_every_framework_gives_three_complete_triplets_with_their_rewards(
    model: FakeModelServer, start_receiver: Callable[..., ReceiverProcess]
) -> None:
    receiver = start_receiver()
    rollouts = {
        run_framework_agent(framework, model.base_url, receiver.http_url): framework
        for framework in FRAMEWORKS
    }
    result = adapt_from_server(receiver.http_url, list(rollouts))
    for rollout_id, framework in rollouts.items():
        triplets: list[dict[str, Any]] = result[rollout_id]["triplets"]
        # The same checks as the golden files'.
        check_framework_triplets(framework, triplets, token_ids=framework in WITH_TOKEN_IDS)


def test_litellm_default_reads_the_per_call_spans_and_leaves_the_rollout_span_alone(
    model: FakeModelServer, start_receiver: Callable[..., ReceiverProcess]
) -> None:
    """``litellm.callbacks=["otel"]`` writes each call onto the rollout span, overwriting the
    last; its ``raw_gen_ai_request`` children are the calls, token ids and all."""
    receiver = start_receiver()
    before = len(model.model.answers)
    rollout_id = run_framework_agent("litellm", model.base_url, receiver.http_url)
    answers = model.model.answers[before:]
    records = cli_spans(receiver)[rollout_id]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_name.setdefault(record["name"], []).append(record)
    (rollout_span,) = by_name["agentlightning.rollout"]
    assert "lightning_otlp.original_name" not in rollout_span["attributes"]
    # LiteLLM did write the last call onto it: that is what must not become a call.
    assert rollout_span["attributes"]["gen_ai.response.id"] == answers[-1]["id"]
    calls = by_name["openai.chat.completion"]
    assert [c["attributes"]["lightning_otlp.original_name"] for c in calls] == [
        "raw_gen_ai_request"
    ] * 3
    assert [c["parent_id"] for c in calls] == [rollout_span["span_id"]] * 3
    assert [c["attributes"]["gen_ai.response.id"] for c in calls] == [a["id"] for a in answers]
    for call, answer in zip(calls, answers, strict=True):
        assert call["attributes"]["prompt_token_ids"] == answer["prompt_token_ids"]
        assert call["attributes"]["response_token_ids"] == answer["choices"][0]["token_ids"]

    triplets = adapt_from_server(receiver.http_url, [rollout_id])[rollout_id]["triplets"]
    assert [t["response_id"] for t in triplets] == [a["id"] for a in answers]
    assert [t["prompt_token_ids"] for t in triplets] == [a["prompt_token_ids"] for a in answers]
    assert [t["response_token_ids"] for t in triplets] == [
        a["choices"][0]["token_ids"] for a in answers
    ]
    assert [t["reward"] for t in triplets] == [0.1, 0.2, 0.3]


def test_litellm_calls_inside_a_users_step_spans_are_the_calls_and_the_steps_are_not(
    model: FakeModelServer, start_receiver: Callable[..., ReceiverProcess]
) -> None:
    """Each call and its reward inside the agent's own ``step`` span: LiteLLM writes the call
    onto the step too, but the step has the call as its child, so it is not one."""
    receiver = start_receiver()
    before = len(model.model.answers)
    rollout_id = run_framework_agent("litellm-step", model.base_url, receiver.http_url)
    answers = model.model.answers[before:]
    records = cli_spans(receiver)[rollout_id]
    steps = [r for r in records if r["name"] == "step"]
    assert len(steps) == 3
    # LiteLLM did write each step's call onto it: that is what must not become a call.
    assert [s["attributes"]["gen_ai.response.id"] for s in steps] == [a["id"] for a in answers]
    calls = [r for r in records if r["name"] == "openai.chat.completion"]
    assert [c["attributes"]["lightning_otlp.original_name"] for c in calls] == [
        "raw_gen_ai_request"
    ] * 3
    assert [c["parent_id"] for c in calls] == [s["span_id"] for s in steps]

    triplets = adapt_from_server(receiver.http_url, [rollout_id])[rollout_id]["triplets"]
    check_framework_triplets("litellm-step", triplets, token_ids=True)
    assert [t["response_id"] for t in triplets] == [a["id"] for a in answers]
