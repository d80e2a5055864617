"""Start rollouts and call a TypeScript agent inside each; lightning-otlp assembles the rollouts.

    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 python runner.py http://127.0.0.1:8787/solve

The runner's spans carry the rollout ids (``RolloutSpanProcessor``); the agent's spans carry
none but share the runner's trace (``traceparent``), so the receiver puts them in the same
rollout and attempt. Each rollout ends succeeded or failed and holds a reward.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from lightning_otlp import RolloutSpanProcessor, emit_reward, rollout

provider = TracerProvider(resource=Resource.create({"service.name": "python-runner"}))
provider.add_span_processor(RolloutSpanProcessor())
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # default batch settings
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("python-runner")

# Eighteen sums the agent can do and two it cannot (those rollouts end failed).
TASKS = [(f"What is {i} + {2 * i}?", 3 * i) for i in range(18)] + [
    ("What is an impossible sum of 1 and 2?", 3),
    ("Another impossible one: 4 and 5?", 9),
]


def run_one(agent_url: str, question: str, expected: int) -> str:
    with rollout(input={"question": question}, mode="train") as ids:
        with tracer.start_as_current_span("call agent"):
            headers: dict[str, str] = {}
            propagate.inject(headers)  # traceparent: the agent joins this trace
            response = httpx.post(agent_url, json={"question": question}, headers=headers)
            response.raise_for_status()  # a failed call fails the rollout
            answer = response.json()["answer"]
        emit_reward(1.0 if answer == expected else 0.0)
    return ids.rollout_id


def main(agent_url: str, tasks: list[tuple[str, int]] = TASKS) -> None:
    with ThreadPoolExecutor(max_workers=len(tasks)) as pool:
        futures = [pool.submit(run_one, agent_url, q, a) for q, a in tasks]
        for (question, _), future in zip(tasks, futures, strict=True):
            try:
                print(f"{future.result()}  {question}")
            except httpx.HTTPStatusError as exc:
                print(f"failed          {question}: {exc.response.status_code}")
    provider.shutdown()  # flush the last spans


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8787/solve")
