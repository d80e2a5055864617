"""Build OTLP trace requests for tests and benchmarks, the way an SDK would."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest as PB2ExportTraceServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue as PB2AnyValue
from opentelemetry.proto.common.v1.common_pb2 import KeyValue as PB2KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PB2Span


def any_value(value: Any) -> PB2AnyValue:
    out = PB2AnyValue()
    if isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int):
        out.int_value = value
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, bytes):
        out.bytes_value = value
    elif isinstance(value, (list, tuple)):
        out.array_value.values.extend(any_value(v) for v in value)
    elif isinstance(value, Mapping):
        out.kvlist_value.values.extend(key_values(value))
    else:
        out.string_value = str(value)
    return out


def key_values(attrs: Mapping[str, Any]) -> list[PB2KeyValue]:
    return [PB2KeyValue(key=k, value=any_value(v)) for k, v in attrs.items()]


def length_delimited(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field, for requests no SDK would encode."""
    size, length = b"", len(payload)
    while length >= 0x80:
        size += bytes([length & 0x7F | 0x80])
        length >>= 7
    return bytes([number << 3 | 2]) + size + bytes([length]) + payload


def make_span(
    name: str = "op",
    *,
    trace_id: bytes | None = None,
    span_id: bytes | None = None,
    parent_id: bytes = b"",
    attributes: Mapping[str, Any] | None = None,
    start_ns: int | None = None,
    duration_ns: int = 1_000_000,
) -> PB2Span:
    start = start_ns if start_ns is not None else time.time_ns()
    return PB2Span(
        trace_id=trace_id if trace_id is not None else os.urandom(16),
        span_id=span_id if span_id is not None else os.urandom(8),
        parent_span_id=parent_id,
        name=name,
        kind=PB2Span.SPAN_KIND_INTERNAL,
        start_time_unix_nano=start,
        end_time_unix_nano=start + duration_ns,
        attributes=key_values(attributes or {}),
    )


def make_request(
    spans: list[PB2Span], resource: Mapping[str, Any] | None = None
) -> PB2ExportTraceServiceRequest:
    request = PB2ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.extend(key_values({"service.name": "test", **(resource or {})}))
    ss = rs.scope_spans.add()
    ss.scope.name = "tests"
    ss.spans.extend(spans)
    return request


GENAI_ATTRIBUTES: dict[str, Any] = {
    "gen_ai.system": "openai",
    "gen_ai.operation.name": "chat",
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.usage.input_tokens": 812,
    "gen_ai.usage.output_tokens": 164,
    "gen_ai.response.finish_reasons": ["stop"],
}
# A short exchange: without a prompt or a response a chat span is not read as a model call.
GENAI_CONTENT: dict[str, Any] = {
    "gen_ai.input.messages": '[{"role":"user","parts":[{"type":"text","content":"Hi?"}]}]',
    "gen_ai.output.messages": '[{"role":"assistant","parts":[{"type":"text","content":"Hi."}]}]',
}


def genai_request(
    count: int,
    *,
    rollouts: int = 8,
    seed: int = 0,
    resource: Mapping[str, Any] | None = None,
    ids: list[tuple[str, str]] | None = None,
    content: bool = False,
) -> PB2ExportTraceServiceRequest:
    """``count`` chat-completion spans of about 300 bytes each, spread over a few rollouts.

    ``ids`` names the (rollout, attempt) pairs to use; by default they derive from ``seed``.
    ``content`` adds ``GENAI_CONTENT`` to each (about 150 bytes more).
    """
    if ids is None:
        ids = [(f"ro-{seed * 31 + r:012x}", f"at-{r:08x}") for r in range(rollouts)]
    base = time.time_ns()
    spans = []
    for i in range(count):
        rollout, attempt = ids[i % len(ids)]
        spans.append(
            make_span(
                "chat gpt-4o-mini",
                attributes={
                    **GENAI_ATTRIBUTES,
                    **(GENAI_CONTENT if content else {}),
                    "agentlightning.rollout_id": rollout,
                    "agentlightning.attempt_id": attempt,
                },
                start_ns=base + i * 1000,
            )
        )
    return make_request(spans, resource)
