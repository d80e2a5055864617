"""Run the Python and Node.js test agents, and compare what they sent with what was stored.

Each agent prints one JSON line per span as its SDK saw it (ids, times in nanoseconds,
attributes, events, links, status, resource), so checks need no knowledge of the wire format.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import pytest

from .support import ROOT, ReceiverProcess, node_script, validate_with_agl

PYTHON_AGENT = ROOT / "tests" / "clients" / "python_agent.py"
SpanDoc = dict[str, Any]


def run_python_agent(
    receiver: ReceiverProcess, exporter: str, *args: str, env: dict[str, str] | None = None
) -> list[SpanDoc]:
    """Run tests/clients/python_agent.py against ``receiver``; return the spans it sent."""
    endpoint = "http://" + receiver.grpc_target if exporter == "grpc" else receiver.traces_url
    argv = [sys.executable, str(PYTHON_AGENT), "--exporter", exporter, "--endpoint", endpoint]
    return _run([*argv, *args], env)


def run_node_agent(
    receiver: ReceiverProcess, exporter: str, *args: str, env: dict[str, str] | None = None
) -> list[SpanDoc]:
    """Run tests/node/agent.js with one of the stock Node exporters; return the spans it sent."""
    endpoint = "http://" + receiver.grpc_target if exporter == "grpc" else receiver.traces_url
    return _run(["node", str(node_script("agent.js")), exporter, endpoint, *args], env)


def _run(argv: list[str], env: dict[str, str] | None) -> list[SpanDoc]:
    # The agents read OTEL_* like any application; keep the test runner's own out of it.
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        argv, env={**base, **(env or {})}, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"{argv[1]} exited {done.returncode}:\n{done.stderr}"
    spans = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert spans, f"{argv[1]} reported no spans:\n{done.stderr}"
    return spans


def assert_stored_as_sent(sent: Sequence[SpanDoc], stored: Sequence[dict[str, Any]]) -> None:
    """Every sent span is stored once, with ids, parent, times, attributes, events, links,
    status and resource intact."""
    by_id = {s["span_id"]: s for s in stored}
    assert len(by_id) == len(stored) == len(sent)
    assert set(by_id) == {s["span_id"] for s in sent}
    for want in sent:
        got = by_id[want["span_id"]]
        trace_id, parent_id = want["trace_id"], want["parent_id"]
        assert got["name"] == want["name"]
        assert got["trace_id"] == trace_id
        assert got["context"] == {
            "trace_id": trace_id,
            "span_id": want["span_id"],
            "is_remote": False,
            "trace_state": {},
        }
        assert got["parent_id"] == parent_id
        if parent_id is None:
            assert got["parent"] is None
        else:
            assert got["parent"]["trace_id"] == trace_id
            assert got["parent"]["span_id"] == parent_id
        assert got["start_time"] == _seconds(want["start_time"])
        assert got["end_time"] == _seconds(want["end_time"])
        assert got["attributes"] == want["attributes"]
        assert [(e["name"], e["attributes"], e["timestamp"]) for e in got["events"]] == [
            (e["name"], e["attributes"], _seconds(e["timestamp"])) for e in want["events"]
        ]
        assert got["links"] == [
            {
                "context": {
                    "trace_id": link["trace_id"],
                    "span_id": link["span_id"],
                    "is_remote": False,
                    "trace_state": {},
                },
                "attributes": link["attributes"] or None,
            }
            for link in want["links"]
        ]
        assert got["status"] == {
            "status_code": want["status"]["code"],
            "description": want["status"]["description"],
        }
        assert got["resource"]["attributes"] == want["resource"]


def _seconds(nanos: int | str) -> Any:
    return pytest.approx(int(nanos) / 1e9, abs=1e-6)


def assert_sequence_per_request(
    stored: Sequence[dict[str, Any]], *requests: Sequence[SpanDoc]
) -> None:
    """Sequence ids of one attempt follow start time, whatever order requests arrived in: each
    span's id is its start in microseconds (one more where two started in the same one)."""
    by_id = {s["span_id"]: s for s in stored}
    sent = [s for r in requests for s in r]
    assert len({by_id[s["span_id"]]["attempt_id"] for s in sent}) == 1
    ordered = sorted(sent, key=lambda s: int(s["start_time"]))
    seqs = [by_id[s["span_id"]]["sequence_id"] for s in ordered]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    for span, seq in zip(ordered, seqs, strict=True):
        assert seq - int(span["start_time"]) // 1000 in (-1, 0, 1, 2, 3)  # rounding, ties


def assert_valid_for_agl(
    spans: Sequence[dict[str, Any]], rollouts: Sequence[dict[str, Any]]
) -> None:
    """agentlightning 0.3.0's own models accept every record, and round-trip it unchanged."""
    assert validate_with_agl("Span", spans) == list(spans)
    assert validate_with_agl("AttemptedRollout", rollouts) == list(rollouts)


def rollouts_by_id(receiver: ReceiverProcess, *rollout_ids: str) -> dict[str, dict[str, Any]]:
    wanted = set(rollout_ids)
    found = {r["rollout_id"]: r for r in receiver.rollouts() if r["rollout_id"] in wanted}
    assert set(found) == wanted, f"missing rollouts {wanted - set(found)}"
    return found
