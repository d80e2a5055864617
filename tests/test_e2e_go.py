"""Go agents with the stock go.opentelemetry.io/otel SDK (examples/go-agent), built by
``make go-agent``: ids from OTEL_RESOURCE_ATTRIBUTES over OTLP/gRPC and OTLP/HTTP with every
attribute type intact, and ids from W3C Baggage sent by a Python runner to the Go service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .collectors import BAGGAGE_RUNNER, GO_AGENT_BIN, built, start_service, stop_service
from .support import ROOT, ReceiverProcess, validate_with_agl, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.go]

ROLLOUT, ATTEMPT = "ro-0123456789ab", "at-01234567"
# What examples/go-agent/quickstart sets on its model-call span, as the receiver must keep it.
CHAT_ATTRIBUTES: dict[str, Any] = {
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.request.stream": False,
    "gen_ai.usage.input_tokens": 21,
    "gen_ai.request.temperature": 0.7,
    "gen_ai.response.finish_reasons": ["stop"],
    "prompt_token_ids": [101, 2054, 2003],
    "logprobs": [-0.25, -1.5],
    "cache_hits": [True, False],
}


SERVICE = "go-agent-service"


def from_service(
    receiver: ReceiverProcess, rollout_id: str, count: int
) -> list[dict[str, Any]] | None:
    """The rollout's spans once ``count`` of them come from the Go service."""
    spans = receiver.spans(rollout_id)
    go = [s for s in spans if s["resource"]["attributes"].get("service.name") == SERVICE]
    return spans if len(go) >= count else None


def assert_typed(attributes: dict[str, Any], expected: dict[str, Any]) -> None:
    """Equal values of the same JSON types: a bool stays a bool, an int never becomes a float."""
    for key, value in expected.items():
        assert attributes[key] == value, key
        got = attributes[key]
        items = zip(got, value, strict=True) if isinstance(value, list) else [(got, value)]
        for have, want in items:
            assert type(have) is type(want), (key, have, want)


def resource_ids(rollout_id: str) -> dict[str, str]:
    ids = f"agentlightning.rollout_id={rollout_id},agentlightning.attempt_id={ATTEMPT}"
    return {"OTEL_RESOURCE_ATTRIBUTES": ids}


def assert_quickstart(
    receiver: ReceiverProcess, rollout_id: str, language: str, service: str
) -> None:
    """A quickstart's two spans, in its rollout, every attribute as sent, valid for agl."""
    spans = {s["name"]: s for s in receiver.spans(rollout_id)}
    assert set(spans) == {"agent run", "chat gpt-4o-mini"}
    chat = spans["chat gpt-4o-mini"]
    assert chat["attempt_id"] == ATTEMPT
    assert_typed(chat["attributes"], CHAT_ATTRIBUTES)
    assert chat["parent_id"] == spans["agent run"]["span_id"]
    assert chat["status"]["status_code"] == "OK"
    assert [e["name"] for e in chat["events"]] == ["gen_ai.choice"]
    assert chat["resource"]["attributes"]["service.name"] == service
    assert chat["resource"]["attributes"]["telemetry.sdk.language"] == language
    validated = validate_with_agl("Span", list(spans.values()))
    assert_typed(
        validated[[s["name"] for s in validated].index("chat gpt-4o-mini")]["attributes"],
        CHAT_ATTRIBUTES,
    )


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReceiverProcess]:
    proc = ReceiverProcess(tmp_path_factory.mktemp("go") / "receiver.db").start()
    yield proc
    assert proc.stop() == 0
    assert "Traceback" not in proc.log()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_go_quickstart_lands_in_its_rollout_with_every_attribute_type(
    receiver: ReceiverProcess, protocol: str
) -> None:
    rollout_id = ROLLOUT[:-2] + ("01" if protocol == "grpc" else "02")
    endpoint = "http://" + receiver.grpc_target if protocol == "grpc" else receiver.http_url
    done = subprocess.run(
        [str(built(GO_AGENT_BIN / "quickstart", "go-agent"))],
        env={
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            **resource_ids(rollout_id),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert_quickstart(receiver, rollout_id, "go", "go-agent")


@pytest.fixture
def go_service(receiver: ReceiverProcess, tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Start the Go agent service exporting over ``protocol``; returns its URL."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(protocol: str) -> str:
        endpoint = "http://" + receiver.grpc_target if protocol == "grpc" else receiver.http_url
        proc, url = start_service(
            [str(built(GO_AGENT_BIN / "service", "go-agent"))],
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
                "OTEL_BSP_SCHEDULE_DELAY": "200",
                "PORT": "0",
            },
            tmp_path / "go-service.log",
        )
        procs.append(proc)
        return url

    yield start
    for proc in procs:
        assert stop_service(proc) == 0


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_go_service_spans_join_the_python_runners_rollout_through_baggage(
    receiver: ReceiverProcess, go_service: Callable[[str], str], protocol: str
) -> None:
    url = go_service(protocol)
    done = subprocess.run(
        [sys.executable, str(BAGGAGE_RUNNER), url],
        env={**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    for task in json.loads(done.stdout.splitlines()[-1]):
        assert task["answer"] in (5, 42)
        spans = wait_until(
            lambda rollout_id=task["rollout_id"]: from_service(receiver, rollout_id, 2),
            "the Go service's spans",
        )
        go = [s for s in spans if s["resource"]["attributes"]["service.name"] == SERVICE]
        assert sorted(s["name"] for s in go) == ["POST /solve", "chat gpt-4o-mini"]
        for span in go:
            # the ids came as Baggage and were copied onto the span by baggagecopy
            assert span["attributes"]["agentlightning.rollout_id"] == task["rollout_id"]
            assert span["attributes"]["agentlightning.attempt_id"] == task["attempt_id"]
            assert span["attempt_id"] == task["attempt_id"]
        validate_with_agl("Span", spans)


def test_example_python_runner_drives_the_go_service(
    receiver: ReceiverProcess, go_service: Callable[[str], str]
) -> None:
    """examples/python-runner/runner.py, unchanged, against the Go service: its spans carry no
    ids and join each rollout by the trace (trace affinity)."""
    url = go_service("http/protobuf")
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "python-runner" / "runner.py"), url],
        env={**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rollout_ids = [line.split()[0] for line in done.stdout.splitlines()]
    assert sum(r.startswith("ro-") for r in rollout_ids) == 18  # and two failed, as designed
    for rollout_id in (r for r in rollout_ids if r.startswith("ro-")):
        spans = wait_until(
            lambda rollout_id=rollout_id: from_service(receiver, rollout_id, 2),
            "the Go service's spans",
        )
        go = [s["name"] for s in spans if s["resource"]["attributes"]["service.name"] == SERVICE]
        assert sorted(go) == ["POST /solve", "chat gpt-4o-mini"]
