"""A Python runner that calls an agent service with its rollout ids in W3C Baggage.

    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 python baggage_runner.py AGENT_URL

Two tasks, each its own rollout (``rollout(propagate=True)``) and its own trace; the agent's
spans join the rollout by the ids it copies from Baggage. Prints one JSON list: per task the
rollout and attempt ids and the agent's answer.
"""

from __future__ import annotations

import json
import sys

import httpx
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from lightning_otlp import RolloutSpanProcessor, rollout

QUESTIONS = ["What is 2 + 3?", "What is 40 + 2?"]


def main(agent_url: str) -> None:
    provider = TracerProvider()
    provider.add_span_processor(RolloutSpanProcessor())
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    out = []
    for question in QUESTIONS:
        with rollout(input={"question": question}, propagate=True) as ids:
            headers: dict[str, str] = {}
            propagate.inject(headers)  # traceparent and baggage
            answer = httpx.post(agent_url, json={"question": question}, headers=headers).json()
        out.append({"rollout_id": ids.rollout_id, "attempt_id": ids.attempt_id, **answer})
    provider.shutdown()
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
