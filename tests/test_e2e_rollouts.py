"""The cross-language set-up end to end: the example Python runner starts 20 rollouts in parallel
and calls the example TypeScript agent (stock OTel Node.js SDK, default batch settings, no Agent
Lightning code) inside each. Every agent span must land in its runner's rollout and attempt."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .support import (
    EXAMPLE_RUNNER,
    ReceiverProcess,
    start_example_agent,
    validate_with_agl,
)

pytestmark = [pytest.mark.e2e, pytest.mark.node]

# Per succeeded rollout: runner (rollout, rollout.start, call agent, annotation) + agent (3).
# Per failed rollout: runner (rollout, rollout.start, call agent) + agent (POST /solve).
EXPECTED_SPANS = 18 * 7 + 2 * 4


@pytest.fixture
def agent(
    start_receiver: Callable[..., ReceiverProcess], tmp_path: Path
) -> Iterator[tuple[ReceiverProcess, str]]:
    receiver = start_receiver()
    proc, url = start_example_agent(receiver.http_url, tmp_path / "agent.log")
    yield receiver, url
    proc.terminate()
    proc.wait(20)


def test_twenty_parallel_rollouts_across_languages(agent: tuple[ReceiverProcess, str]) -> None:
    receiver, url = agent
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_url}
    run = subprocess.run(
        [sys.executable, str(EXAMPLE_RUNNER), url],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("failed") == 2 and len(run.stdout.splitlines()) == 20
    spans = receiver.wait_for_spans(EXPECTED_SPANS, timeout=30)
    assert len(spans) == EXPECTED_SPANS

    rollouts = {r["rollout_id"]: r for r in receiver.rollouts()}
    assert len(rollouts) == 20  # no per-trace rollout is left over
    by_rollout: dict[str, list[dict]] = defaultdict(list)
    for span in spans:
        by_rollout[span["rollout_id"]].append(span)
    statuses = defaultdict(int)
    for rollout_id, rollout in rollouts.items():
        members = by_rollout[rollout_id]
        root = next(s for s in members if s["name"] == "agentlightning.rollout")
        assert {s["trace_id"] for s in members} == {root["trace_id"]}
        assert {s["attempt_id"] for s in members} == {rollout["attempt"]["attempt_id"]}
        agent_spans = [
            s for s in members if s["resource"]["attributes"]["service.name"] == "typescript-agent"
        ]
        assert agent_spans, f"no agent span in {rollout_id}"
        assert not any("agentlightning.rollout_id" in s["attributes"] for s in agent_spans)
        in_sequence = sorted(agent_spans, key=lambda s: s["sequence_id"])
        assert in_sequence == sorted(agent_spans, key=lambda s: (s["start_time"], s["sequence_id"]))
        assert len({s["sequence_id"] for s in members}) == len(members)
        question = rollout["input"]["question"]
        statuses[rollout["status"]] += 1
        assert rollout["status"] == rollout["attempt"]["status"]
        assert rollout["end_time"] == root["end_time"]
        if "impossible" in question:
            assert rollout["status"] == "failed" and len(agent_spans) == 1
            assert agent_spans[0]["status"]["status_code"] == "ERROR"
        else:
            assert rollout["status"] == "succeeded" and len(agent_spans) == 3
            reward = next(s for s in members if s["name"] == "agentlightning.annotation")
            assert reward["attributes"]["agentlightning.reward.0.value"] == 1.0
    assert statuses == {"succeeded": 18, "failed": 2}
    validate_with_agl("Span", spans)
    validate_with_agl("AttemptedRollout", list(rollouts.values()))

    table = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightning_otlp",
            "rollouts",
            "--table",
            "--store",
            receiver.store_url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.splitlines()
    rewards = sorted(line.split()[5] for line in table[1:-1])
    assert rewards == ["-", "-"] + ["1"] * 18
    assert "not moved" not in receiver.log()
