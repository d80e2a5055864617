"""A training-shaped run with Agent Lightning 0.3.0's own pieces, its store at a URL.

    python agl_training.py STORE_URL N_ROLLOUTS N_RUNNERS PROGRESS_FILE

The algorithm enqueues N rollouts and waits for them; ``N_RUNNERS`` runner processes (the
Trainer's client-server strategy with an external store: ``managed_store=False``) dequeue them,
run a ``LitAgent`` traced by ``OtelTracer`` (OTLP to ``<url>/v1/traces``) and report rewards;
the algorithm then reads every rollout's spans back and builds triplets with
``TracerTraceToTriplet``. Prints one JSON line: per rollout, its status, attempts, spans and
triplets. ``PROGRESS_FILE`` gets the number of finished rollouts as the run goes, so a test can
kill the store mid-run.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from agentlightning import LitAgent, Trainer
from agentlightning.adapter import TracerTraceToTriplet
from agentlightning.algorithm import Algorithm
from agentlightning.execution import ClientServerExecutionStrategy
from agentlightning.store.client_server import LightningStoreClient
from agentlightning.tracer import OtelTracer
from agentlightning.types import LLM, RolloutConfig
from opentelemetry import trace

# Wait for a restarting store instead of giving up after upstream's default 0.8 s of probes.
PATIENT = {"health_retry_delays": (0.25,) * 80, "retry_delays": (0.5, 1.0, 2.0, 4.0)}
# A worker lost with the store (a dequeue whose answer never arrived) is retried, as upstream
# does, once the watchdog finds its attempt unresponsive.
CONFIG = RolloutConfig(
    unresponsive_seconds=8.0, max_attempts=3, retry_condition=["unresponsive", "timeout"]
)


class EchoAgent(LitAgent[dict[str, Any]]):
    """One model call (an ``openai.chat.completion`` span) and a reward, per task."""

    def rollout(self, task: dict[str, Any], resources: Any, rollout: Any) -> float:
        tracer = trace.get_tracer("echo-agent")
        with tracer.start_as_current_span("agent.run"):
            with tracer.start_as_current_span("openai.chat.completion") as span:
                span.set_attribute("gen_ai.request.model", resources["main_llm"].model)
                span.set_attribute("gen_ai.prompt.0.role", "user")
                span.set_attribute("gen_ai.prompt.0.content", task["question"])
                span.set_attribute("gen_ai.completion.0.role", "assistant")
                span.set_attribute("gen_ai.completion.0.content", task["question"].upper())
                span.set_attribute("prompt_token_ids", [1, 2, 3])
                span.set_attribute("response_token_ids", [4, 5])
            time.sleep(0.4)  # long enough for a kill to land mid-run
        return float(task["reward"])


class EnqueueAndWait(Algorithm):
    """The algorithm side: enqueue every task, wait for all, read spans, build triplets."""

    def __init__(self, progress: Path) -> None:
        super().__init__()
        self.progress = progress
        self.result: dict[str, Any] = {}

    async def run(self, train_dataset: Any = None, val_dataset: Any = None) -> None:
        store = self.get_store()
        await store.add_resources({"main_llm": LLM(endpoint="http://llm.invalid/v1", model="m")})
        ids = []
        for task in train_dataset:
            rollout = await store.enqueue_rollout(input=task, mode="train", config=CONFIG)
            ids.append(rollout.rollout_id)
        finished: dict[str, Any] = {}
        while len(finished) < len(ids):
            left = [i for i in ids if i not in finished]
            for rollout in await store.wait_for_rollouts(rollout_ids=left, timeout=0.05):
                finished[rollout.rollout_id] = rollout
            self.progress.write_text(str(len(finished)))
            await asyncio.sleep(0.1)
        adapter = TracerTraceToTriplet()
        out = {}
        for rollout_id in ids:
            attempts = await store.query_attempts(rollout_id)
            spans = await store.query_spans(rollout_id, "latest")
            triplets = adapter.adapt(list(spans))
            out[rollout_id] = {
                "input": finished[rollout_id].input,
                "status": finished[rollout_id].status,
                "attempts": [a.status for a in attempts],
                "worker": attempts.items[-1].worker_id,
                "spans": [[s.name, s.trace_id, s.span_id, s.sequence_id] for s in spans],
                "triplets": [
                    {"prompt": t.prompt, "response": t.response, "reward": t.reward}
                    for t in triplets
                ],
            }
        self.result = out


def main() -> None:
    url, count, runners, progress = sys.argv[1:5]
    # agentlightning 0.3.0 points its OTLP exporter at the store by setting the exporter's
    # ``_endpoint``, which opentelemetry-exporter-otlp-proto-http >= 1.40 no longer reads (its
    # HTTP client keeps the endpoint it was built with): name the endpoint the standard way.
    os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = url.rstrip("/") + "/v1/traces"
    # The exporter retries a refused export for its timeout (10 s by default), then drops the
    # spans: give a restarting store (slow on a loaded machine) a minute.
    os.environ["OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"] = "60"
    tasks = [{"question": f"q{i}", "reward": i / 10} for i in range(int(count))]
    store = LightningStoreClient(url, **PATIENT)  # type: ignore[arg-type]
    algorithm = EnqueueAndWait(Path(progress))
    trainer = Trainer(
        algorithm=algorithm,
        store=store,
        tracer=OtelTracer(),
        strategy=ClientServerExecutionStrategy(
            role="both", n_runners=int(runners), managed_store=False
        ),
        n_runners=int(runners),
    )
    trainer.fit(EchoAgent(), train_dataset=tasks)
    print(json.dumps(algorithm.result))


if __name__ == "__main__":
    main()
