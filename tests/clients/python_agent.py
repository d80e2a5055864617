"""A small agent traced with the stock OpenTelemetry Python SDK and OTLP exporter.

Run as its own process so the SDK reads ``OTEL_RESOURCE_ATTRIBUTES`` (and every other
``OTEL_*`` variable) the normal way. Prints one JSON line per span it finished, as the SDK saw
it, so a test can compare what was sent with what the receiver stored. Exits 3 when any export
failed, because the batch processor otherwise swallows export results.

    python python_agent.py --exporter grpc --endpoint http://127.0.0.1:4317 \
        [--compression gzip] [--span-ids ro-…,at-…] [--session s1 --session s2] [--traces 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

# Every attribute value type an OpenTelemetry span can carry.
TYPED_ATTRIBUTES: dict[str, Any] = {
    "agent.name": "planner",
    "agent.step": 3,
    "agent.temperature": 0.25,
    "agent.streaming": True,
    "agent.tools": ["search", "calculator"],
    "agent.token_counts": [12, 34, 56],
    "agent.scores": [0.5, 1.5],
    "agent.flags": [True, False],
}


class CheckedExporter(SpanExporter):
    """Delegates to the real exporter and remembers whether any export failed."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.failures = 0
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.inner.export(spans)
        if result is SpanExportResult.SUCCESS:
            self.exported += len(spans)
        else:
            self.failures += 1
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def build_exporter(kind: str, endpoint: str, compression: str | None) -> SpanExporter:
    if kind == "grpc":
        import grpc
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GRPCExporter,
        )

        grpc_compression = {"gzip": grpc.Compression.Gzip, None: None}[compression]
        return GRPCExporter(
            endpoint=endpoint, insecure=True, compression=grpc_compression, timeout=10
        )
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HTTPExporter,
    )

    http_compression = {
        "gzip": Compression.Gzip,
        "deflate": Compression.Deflate,
        None: Compression.NoCompression,
    }[compression]
    return HTTPExporter(endpoint=endpoint, compression=http_compression, timeout=10)


def run_trace(tracer: Any, base_ns: int, extra: dict[str, Any]) -> None:
    """One agent run: a root, an LLM call that fails, a tool call linked to it, a nested step.

    Start times are explicit and differ from end order, so sequence ids can be checked against
    start-time order while the SDK exports in end order.
    """
    ms = 1_000_000
    root = tracer.start_span(
        "agent.run",
        kind=SpanKind.SERVER,
        attributes={**TYPED_ATTRIBUTES, **extra},
        start_time=base_ns,
    )
    ctx = _context_with(root)
    llm = tracer.start_span(
        "llm.call",
        context=ctx,
        kind=SpanKind.CLIENT,
        attributes={"gen_ai.request.model": "gpt-4o-mini", **extra},
        start_time=base_ns + 1 * ms,
    )
    llm.add_event(
        "gen_ai.content.prompt",
        attributes={"gen_ai.prompt": "2+2?", "prompt.tokens": 7, "prompt.cached": False},
        timestamp=base_ns + 2 * ms,
    )
    llm.add_event("retry", timestamp=base_ns + 3 * ms)
    llm.set_status(Status(StatusCode.ERROR, "rate limited"))
    llm.end(end_time=base_ns + 4 * ms)
    tool = tracer.start_span(
        "tool.call",
        context=ctx,
        attributes={"tool.name": "calculator", **extra},
        links=[Link(llm.get_span_context(), attributes={"link.reason": "retry-of", "link.n": 1})],
        start_time=base_ns + 5 * ms,
    )
    step = tracer.start_span(
        "tool.step", context=_context_with(tool), attributes=extra, start_time=base_ns + 6 * ms
    )
    step.end(end_time=base_ns + 7 * ms)
    tool.set_status(Status(StatusCode.OK))
    tool.end(end_time=base_ns + 8 * ms)
    root.end(end_time=base_ns + 9 * ms)


def _context_with(span: Any) -> Any:
    from opentelemetry import trace

    return trace.set_span_in_context(span)


def describe(span: ReadableSpan) -> dict[str, Any]:
    ctx = span.get_span_context()
    assert ctx is not None
    return {
        "name": span.name,
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "start_time": span.start_time,
        "end_time": span.end_time,
        "attributes": _plain(span.attributes),
        "events": [
            {"name": e.name, "attributes": _plain(e.attributes), "timestamp": e.timestamp}
            for e in span.events
        ],
        "links": [
            {
                "trace_id": f"{link.context.trace_id:032x}",
                "span_id": f"{link.context.span_id:016x}",
                "attributes": _plain(link.attributes),
            }
            for link in span.links
        ],
        "status": {"code": span.status.status_code.name, "description": span.status.description},
        "resource": _plain(span.resource.attributes),
    }


def _plain(attrs: Any) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in (attrs or {}).items()}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--exporter", choices=("grpc", "http"), required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--compression", choices=("gzip", "deflate"))
    parser.add_argument("--span-ids", help="ROLLOUT,ATTEMPT to set as span attributes")
    parser.add_argument("--session", action="append", default=[], help="session.id per trace")
    parser.add_argument("--traces", type=int, default=2)
    args = parser.parse_args()

    exporter = CheckedExporter(build_exporter(args.exporter, args.endpoint, args.compression))
    memory = InMemorySpanExporter()
    # Resource.create() merges OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME, as in any app.
    provider = TracerProvider(resource=Resource.create({"service.name": "python-agent"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    # A long delay: the whole run goes out in the one export made at shutdown.
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=60_000))
    tracer = provider.get_tracer("lightning-otlp.tests.python_agent", "1.0")

    extra: dict[str, Any] = {}
    if args.span_ids:
        rollout_id, attempt_id = args.span_ids.split(",")
        extra = {"agentlightning.rollout_id": rollout_id, "agentlightning.attempt_id": attempt_id}
    traces = max(args.traces, len(args.session))
    # Spans start in the past, as a finished agent run's would.
    base = time.time_ns() - 1_000_000_000 - traces * 20_000_000
    for i in range(traces):
        per_trace = dict(extra)
        if args.session:
            per_trace["session.id"] = args.session[i % len(args.session)]
        run_trace(tracer, base + i * 20_000_000, per_trace)
    provider.shutdown()

    for span in memory.get_finished_spans():
        sys.stdout.write(json.dumps(describe(span)) + "\n")
    if exporter.failures or exporter.exported != len(memory.get_finished_spans()):
        print(
            f"export failed: {exporter.failures} failure(s), {exporter.exported} span(s) exported",
            file=sys.stderr,
        )
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
