"""The stock Node.js OTLP exporters (gRPC, HTTP/JSON, HTTP/protobuf) against a real receiver.

tests/node/agent.js uses ``NodeTracerProvider`` with a ``BatchSpanProcessor``, as a Node agent
would. Its HTTP exporters send chunked bodies, and the JSON one sends hex ids.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lightning_otlp import ids

from .agents import (
    SpanDoc,
    assert_sequence_per_request,
    assert_stored_as_sent,
    assert_valid_for_agl,
    rollouts_by_id,
    run_node_agent,
)
from .support import ReceiverProcess, module_receiver

pytestmark = [pytest.mark.e2e, pytest.mark.node]

EXPORTERS = ("grpc", "http", "proto")
TYPED_ATTRIBUTES = {
    "agent.name": "planner",
    "agent.step": 3,
    "agent.temperature": 0.25,
    "agent.streaming": True,
    "agent.tools": ["search", "calculator"],
    "agent.token_counts": [12, 34, 56],
    "agent.scores": [0.5, 1.5],
    "agent.flags": [True, False],
}


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReceiverProcess]:
    """One receiver for the whole module; each case has its own rollout ids."""
    yield from module_receiver(tmp_path_factory, "e2e-node")


def _check(
    receiver: ReceiverProcess, sent: list[SpanDoc], rollout_id: str, attempt_id: str
) -> None:
    # The fixed run: 2 traces of agent.run > (llm.call, tool.call > tool.step).
    assert sorted(s["name"] for s in sent) == sorted(
        ["agent.run", "llm.call", "tool.call", "tool.step"] * 2
    )
    stored = receiver.spans(rollout_id)
    assert {s["attempt_id"] for s in stored} == {attempt_id}
    assert_stored_as_sent(sent, stored)

    by_name = {s["name"]: s for s in stored}  # the last trace's spans, enough for spot checks
    root, llm, tool = by_name["agent.run"], by_name["llm.call"], by_name["tool.call"]
    assert {k: root["attributes"][k] for k in TYPED_ATTRIBUTES} == TYPED_ATTRIBUTES
    assert root["parent"] is None
    assert llm["parent_id"] == tool["parent_id"] == root["span_id"]
    assert by_name["tool.step"]["parent_id"] == tool["span_id"]
    assert llm["status"] == {"status_code": "ERROR", "description": "rate limited"}
    assert tool["status"] == {"status_code": "OK", "description": None}
    assert [e["name"] for e in llm["events"]] == ["gen_ai.content.prompt", "retry"]
    assert llm["events"][0]["attributes"] == {
        "gen_ai.prompt": "2+2?",
        "prompt.tokens": 7,
        "prompt.cached": False,
    }
    assert tool["links"][0]["context"]["span_id"] == llm["span_id"]
    assert tool["links"][0]["attributes"] == {"link.reason": "retry-of", "link.n": 1}
    assert root["resource"]["attributes"]["service.name"] == "node-agent"
    assert root["resource"]["attributes"]["telemetry.sdk.language"] == "nodejs"

    # One request from the batch processor: sequence ids 1..n, in start-time order.
    assert_sequence_per_request(stored, sent)
    rollout = rollouts_by_id(receiver, rollout_id)[rollout_id]
    assert rollout["attempt"]["attempt_id"] == attempt_id
    assert rollout["attempt"]["status"] == "running"
    assert_valid_for_agl(stored, [rollout])


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_ids_in_span_attributes(receiver: ReceiverProcess, exporter: str) -> None:
    rollout_id, attempt_id = ids.new_rollout_id(), ids.new_attempt_id()
    sent = run_node_agent(receiver, exporter, "--span-ids", f"{rollout_id},{attempt_id}")
    assert all(s["attributes"]["agentlightning.attempt_id"] == attempt_id for s in sent)
    _check(receiver, sent, rollout_id, attempt_id)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_ids_in_resource_attributes(receiver: ReceiverProcess, exporter: str) -> None:
    rollout_id, attempt_id = ids.new_rollout_id(), ids.new_attempt_id()
    env = {
        "OTEL_RESOURCE_ATTRIBUTES": (
            f"agentlightning.rollout_id={rollout_id},agentlightning.attempt_id={attempt_id}"
        )
    }
    sent = run_node_agent(receiver, exporter, env=env)
    assert all("agentlightning.rollout_id" not in s["attributes"] for s in sent)
    assert sent[0]["resource"]["agentlightning.rollout_id"] == rollout_id
    _check(receiver, sent, rollout_id, attempt_id)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_gzip(receiver: ReceiverProcess, exporter: str) -> None:
    rollout_id, attempt_id = ids.new_rollout_id(), ids.new_attempt_id()
    sent = run_node_agent(
        receiver, exporter, "--compression", "gzip", "--span-ids", f"{rollout_id},{attempt_id}"
    )
    _check(receiver, sent, rollout_id, attempt_id)
