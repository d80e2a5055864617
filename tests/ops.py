"""What the operations tests share: raw requests, the stock exporters' spans, the Node.js client."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from typing import Any

import grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from .payloads import make_request, make_span
from .support import ReceiverProcess, node_script

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
PROTOBUF = {"content-type": "application/x-protobuf"}
TOKENS = ("tok-first-3f9c1a7e", "tok-second-77b2d0c4")
Start = Callable[..., ReceiverProcess]


def request_bytes(count: int = 3, name: str = "op") -> tuple[bytes, set[str]]:
    spans = [make_span(name) for _ in range(count)]
    return make_request(spans).SerializeToString(), {s.span_id.hex() for s in spans}


def grpc_export(target: str, body: bytes, metadata: list[tuple[str, str]] | None = None) -> None:
    with grpc.insecure_channel(target) as channel:
        channel.unary_unary(EXPORT)(body, metadata=metadata, timeout=10)


def sdk_spans(name: str) -> list[ReadableSpan]:
    """Finished spans made by the real SDK, to hand to a real exporter."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.get_tracer("ops").start_span(name).end()
    provider.shutdown()
    return list(memory.get_finished_spans())


def node(kind: str, endpoint: str, name: str, env: dict[str, str]) -> dict[str, Any]:
    result = subprocess.run(
        ["node", str(node_script("ops_client.js")), kind, endpoint, name],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "OTEL_EXPORTER_OTLP_TIMEOUT": "3000", **env},
    )
    assert result.returncode == 0, result.stderr
    reply: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return reply


def span_names(proc: ReceiverProcess) -> set[str]:
    return {s["name"] for s in proc.spans()}
