"""A Python agent reporting to lightning-otlp: one span processor, one rollout() per task."""

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from lightning_otlp import RolloutSpanProcessor, emit_reward, rollout

provider = TracerProvider()  # the provider the agent already has
provider.add_span_processor(RolloutSpanProcessor())
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # http://127.0.0.1:4318
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("my-agent")

ANSWERS = {"2+2": 4, "3+5": 8}

for task, expected in ANSWERS.items():
    with rollout(input={"task": task}, mode="train") as ids:
        with tracer.start_as_current_span("solve"):  # spans in here carry the rollout's ids
            answer = sum(int(n) for n in task.split("+"))  # the agent's work: models, tools
        emit_reward(1.0 if answer == expected else 0.0)
    print(ids.rollout_id)
provider.shutdown()  # flush before exit
