"""An agent that already has OpenTelemetry: add one span processor, wrap each task in rollout()."""

import json
import os

import httpx
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from lightning_otlp import RolloutSpanProcessor, emit_reward, rollout

TOOL_URL = os.environ.get("TOOL_URL", "http://127.0.0.1:4318/health")

# The provider the agent already has. The one new line is RolloutSpanProcessor.
provider = TracerProvider()
provider.add_span_processor(RolloutSpanProcessor())
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # to 127.0.0.1:4318
trace.set_tracer_provider(provider)
HTTPXClientInstrumentor().instrument()  # third-party spans land in the rollout too
tracer = trace.get_tracer("calculator-agent")

for task in ["2+2", "3*3"]:
    with rollout(input={"task": task}, mode="train") as ids:
        with tracer.start_as_current_span("plan"):
            httpx.get(TOOL_URL, params={"q": task})  # traced by httpx's instrumentation
        emit_reward({"correct": 1.0, "brevity": 0.5}, primary_key="correct")
    print(json.dumps(ids._asdict()))


@rollout(mode="val")  # a decorated function (sync or async) runs each call in a new rollout
def evaluate(task: str) -> float:
    with tracer.start_as_current_span("evaluate"):
        httpx.get(TOOL_URL, params={"q": task})
    emit_reward(0.75)
    return 0.75


evaluate("5-1")
provider.shutdown()  # flushes the spans before the process exits
