"""No OpenTelemetry setup in code: run under `opentelemetry-instrument`, which brings the SDK, the
exporter, the httpx instrumentation and (through lightning-otlp's entry point) RolloutSpanProcessor.
"""

import json
import os

import httpx

from lightning_otlp import emit_reward, rollout

TOOL_URL = os.environ.get("TOOL_URL", "http://127.0.0.1:4318/health")

with rollout(input={"city": "Oslo"}, mode="test") as ids:
    httpx.get(TOOL_URL, params={"city": "Oslo"})
    emit_reward(0.5)
print(json.dumps(ids._asdict()))
