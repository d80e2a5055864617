"""Java agents (examples/java-agent), fetched and built by ``make java-deps``: a plain JDK HTTP
service with no tracing code run under the OpenTelemetry Java agent, whose spans join a Python
runner's rollout through W3C Baggage or OTEL_RESOURCE_ATTRIBUTES; and a program with the SDK and
its OTLP exporter, over OTLP/HTTP and OTLP/gRPC, with every attribute type intact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .collectors import (
    BAGGAGE_RUNNER,
    JAVA_EXAMPLES,
    JAVA_SDK_CLASSPATH,
    JAVA_SERVICE_CLASSES,
    JAVAAGENT,
    built,
    start_service,
    stop_service,
)
from .support import ReceiverProcess, validate_with_agl, wait_until
from .test_e2e_go import ATTEMPT, assert_quickstart, resource_ids

pytestmark = [pytest.mark.e2e, pytest.mark.java]

# Quiet and quick: no metrics or logs, spans leave every 200 ms.
JAVA_ENV = {
    "OTEL_METRICS_EXPORTER": "none",
    "OTEL_LOGS_EXPORTER": "none",
    "OTEL_BSP_SCHEDULE_DELAY": "200",
}


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReceiverProcess]:
    proc = ReceiverProcess(tmp_path_factory.mktemp("java") / "receiver.db").start()
    yield proc
    assert proc.stop() == 0
    assert "Traceback" not in proc.log()


@pytest.fixture
def java_service(
    receiver: ReceiverProcess, tmp_path: Path
) -> Iterator[Callable[[dict[str, str]], str]]:
    """Service.java under the Java agent (``java -javaagent:… Service``); returns its URL."""
    procs: list[Any] = []

    def start(env: dict[str, str]) -> str:
        proc, url = start_service(
            [
                "java",
                f"-javaagent:{built(JAVAAGENT, 'java-deps')}",
                "-cp",
                str(built(JAVA_SERVICE_CLASSES / "Service.class", "java-deps").parent),
                "Service",
            ],
            {
                **JAVA_ENV,
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_url,
                "OTEL_SERVICE_NAME": "java-agent",
                "PORT": "0",
                **env,
            },
            tmp_path / "java-service.log",
            timeout=180,
        )
        procs.append(proc)
        return url

    yield start
    for proc in procs:
        stop_service(proc)


def java_spans(receiver: ReceiverProcess, rollout_id: str) -> list[dict[str, Any]] | None:
    spans = receiver.spans(rollout_id)
    java = [s for s in spans if s["resource"]["attributes"].get("service.name") == "java-agent"]
    return java or None


def test_java_agent_service_joins_the_callers_rollout_through_baggage(
    receiver: ReceiverProcess, java_service: Callable[[dict[str, str]], str]
) -> None:
    url = java_service(
        {"OTEL_JAVA_EXPERIMENTAL_SPAN_ATTRIBUTES_COPY_FROM_BAGGAGE_INCLUDE": "agentlightning.*"}
    )
    done = subprocess.run(
        [sys.executable, str(BAGGAGE_RUNNER), url],
        env={**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for task in json.loads(done.stdout.splitlines()[-1]):
        assert task["answer"] in (5, 42)
        java = wait_until(
            lambda rollout_id=task["rollout_id"]: java_spans(receiver, rollout_id),
            "the Java service's span",
        )
        [server] = java
        assert server["name"] == "POST /solve" or server["name"].startswith("POST")
        assert server["attributes"]["agentlightning.rollout_id"] == task["rollout_id"]
        assert server["attributes"]["agentlightning.attempt_id"] == task["attempt_id"]
        assert server["attempt_id"] == task["attempt_id"]
        assert server["resource"]["attributes"]["telemetry.distro.name"] == (
            "opentelemetry-java-instrumentation"
        )
        validate_with_agl("Span", java)


def test_java_agent_service_in_a_rollout_by_resource_attributes(
    receiver: ReceiverProcess, java_service: Callable[[dict[str, str]], str]
) -> None:
    import httpx

    rollout_id = "ro-0123456789aa"
    url = java_service(resource_ids(rollout_id))
    assert httpx.post(url, json={"question": "What is 1 + 2?"}, timeout=30).json() == {"answer": 3}
    [server] = wait_until(lambda: java_spans(receiver, rollout_id), "the Java service's span")
    assert server["attempt_id"] == ATTEMPT
    assert server["attributes"]["http.request.method"] == "POST"


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_java_sdk_quickstart_lands_in_its_rollout_with_every_attribute_type(
    receiver: ReceiverProcess, protocol: str
) -> None:
    rollout_id = "ro-0123456789" + ("a1" if protocol == "grpc" else "a2")
    endpoint = "http://" + receiver.grpc_target if protocol == "grpc" else receiver.http_url
    classpath = built(JAVA_SDK_CLASSPATH, "java-deps").read_text().strip()
    done = subprocess.run(
        ["java", "-cp", f"target/classes:{classpath}", "Quickstart"],
        cwd=JAVA_EXAMPLES / "sdk",
        env={
            **os.environ,
            **JAVA_ENV,
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_SERVICE_NAME": "java-sdk-agent",
            **resource_ids(rollout_id),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert_quickstart(receiver, rollout_id, "java", "java-sdk-agent")
