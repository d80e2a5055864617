"""Any OpenTelemetry-instrumented program, with no lightning-otlp code: the rollout and attempt ids
come from the standard OTEL_RESOURCE_ATTRIBUTES variable, which every language's SDK reads.
"""

import os

import httpx
from opentelemetry import trace

TOOL_URL = os.environ.get("TOOL_URL", "http://127.0.0.1:4318/health")

with trace.get_tracer("plain-agent").start_as_current_span("answer"):
    httpx.get(TOOL_URL)
