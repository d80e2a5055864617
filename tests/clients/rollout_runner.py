"""A Python runner for the gateway test: rollouts that span two traces, a Go agent called in each.

    python rollout_runner.py AGENT_URL COUNT

Exports OTLP/gRPC to ``OTEL_EXPORTER_OTLP_ENDPOINT``. Each rollout (``rollout(propagate=True)``)
calls the agent from its own trace, then again from a second, new trace still inside the
rollout, and emits a reward. Prints one JSON line per rollout: its id and the names of the spans
this process made for it (the agent's spans are the agent's to count).
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
from opentelemetry import context, propagate, trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from lightning_otlp import RolloutSpanProcessor, emit_reward, rollout


class Count(SpanProcessor):
    """Names of the ended spans, by rollout id."""

    def __init__(self) -> None:
        self.names: dict[str, list[str]] = {}

    def on_end(self, span: ReadableSpan) -> None:
        rollout_id = str((span.attributes or {}).get("agentlightning.rollout_id"))
        self.names.setdefault(rollout_id, []).append(span.name)


count = Count()
provider = TracerProvider(resource=Resource.create({"service.name": "python-runner"}))
provider.add_span_processor(RolloutSpanProcessor())
provider.add_span_processor(count)
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(insecure=True)))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("python-runner")
http = httpx.Client(timeout=30)


def call(agent_url: str, question: str) -> int:
    headers: dict[str, str] = {}
    propagate.inject(headers)  # traceparent and the rollout's baggage
    response = http.post(agent_url, json={"question": question}, headers=headers)
    response.raise_for_status()
    return int(response.json()["answer"])


def run_one(agent_url: str, i: int) -> str:
    with rollout(input={"task": i}, mode="train", propagate=True) as ids:
        with tracer.start_as_current_span("call agent"):
            answer = call(agent_url, f"What is {i} + {2 * i}?")
        # A second trace in the same rollout: a new root span, the rollout's context kept.
        new_trace = trace.set_span_in_context(trace.INVALID_SPAN, context.get_current())
        with tracer.start_as_current_span("check answer", context=new_trace):
            checked = call(agent_url, f"What is {answer} + 0?")
        emit_reward(1.0 if checked == 3 * i else 0.0)
    return ids.rollout_id


def main(agent_url: str, n: int) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        rollout_ids = list(pool.map(lambda i: run_one(agent_url, i), range(n)))
    provider.shutdown()
    for rollout_id in rollout_ids:
        print(json.dumps({"rollout_id": rollout_id, "spans": sorted(count.names[rollout_id])}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
