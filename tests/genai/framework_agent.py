"""A small tool-using agent on a real agent framework, traced by the framework's own telemetry.

Runs in the framework's environment (``make framework-envs``). One rollout, three model calls:
the first answers with a call to the weather tool, the second carries the tool's result, the
third is a plain follow-up; a reward after each (0.1, 0.2, 0.3). Prints the rollout id as JSON.

    python framework_agent.py FRAMEWORK --model-url URL (--endpoint URL | --record FILE)

FRAMEWORK: ``litellm`` (``litellm.callbacks=["otel"]``, defaults), ``litellm-request-span``
(the same with ``USE_OTEL_LITELLM_REQUEST_SPAN=true``), ``litellm-step`` (defaults, each call
and its reward inside a user's own ``step`` span, which LiteLLM writes the call onto),
``litellm-semconv``
(``OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental``, with the request span),
``pydantic-ai-v2`` ... ``pydantic-ai-v6`` (its built-in instrumentation in that data format),
``openlit``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

SYSTEM = "You are a helpful weather assistant."
QUESTION = "What is the weather in Paris?"
FOLLOW_UP = "Thanks. Should I take an umbrella?"
TOOL_RESULT = "Sunny, 21 C"
REWARDS = (0.1, 0.2, 0.3)
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}

_ENV: dict[str, dict[str, str]] = {
    "litellm": {},
    "litellm-step": {},
    "litellm-request-span": {"USE_OTEL_LITELLM_REQUEST_SPAN": "true"},
    "litellm-semconv": {
        "OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental",
        "USE_OTEL_LITELLM_REQUEST_SPAN": "true",
    },
    **{f"pydantic-ai-v{v}": {} for v in range(2, 7)},
    "openlit": {},
}


def run_litellm(model_url: str, tracer_provider: Any, steps: bool = False) -> None:
    import contextlib

    import litellm

    from lightning_otlp.sdk import emit_reward

    tracer = tracer_provider.get_tracer("framework-agent")

    litellm.callbacks = ["otel"]
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": QUESTION},
    ]

    def complete(**extra: Any) -> Any:
        return litellm.completion(
            model="openai/fake-model",
            api_base=model_url,
            api_key="not-needed",
            messages=messages,
            **extra,
        )

    def step() -> Any:
        """The user's own span around one call and its reward, as an agent loop opens."""
        return tracer.start_as_current_span("step") if steps else contextlib.nullcontext()

    with step():
        first = complete(tools=[WEATHER_TOOL])
        _settle()
        emit_reward(REWARDS[0])
    call = first.choices[0].message.tool_calls[0]
    messages.append(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
            ],
        }
    )
    messages.append({"role": "tool", "tool_call_id": call.id, "content": TOOL_RESULT})
    with step():
        second = complete(tools=[WEATHER_TOOL])
        _settle()
        emit_reward(REWARDS[1])
    messages.append({"role": "assistant", "content": second.choices[0].message.content})
    messages.append({"role": "user", "content": FOLLOW_UP})
    with step():
        complete()
        _settle()
        emit_reward(REWARDS[2])


def _settle() -> None:
    """LiteLLM logs a sync call from its logging thread pool after the call returns: wait until
    that pool has nothing pending, so the call's spans are written before the reward (their
    times are the call's own either way) and before the providers flush."""
    from litellm.litellm_core_utils.thread_pool_executor import executor

    deadline = time.monotonic() + 60
    # Each pending task holds one slot of this semaphore until it is done.
    while executor._pending_slots._value < executor._max_pending_tasks:
        if time.monotonic() > deadline:
            raise SystemExit("LiteLLM's logging did not finish within 60 s")
        time.sleep(0.01)


def run_pydantic_ai(model_url: str, tracer_provider: Any, version: int) -> None:
    from pydantic_ai import Agent
    from pydantic_ai.models.instrumented import InstrumentationSettings
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    from lightning_otlp.sdk import emit_reward

    model = OpenAIChatModel(
        "fake-model", provider=OpenAIProvider(base_url=model_url, api_key="not-needed")
    )
    settings = InstrumentationSettings(
        tracer_provider=tracer_provider,
        version=version,
        include_content=True,  # type: ignore[arg-type]
    )
    Agent.instrument_all(settings)
    agent = Agent(model, system_prompt=SYSTEM)

    @agent.tool_plain
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        return TOOL_RESULT

    async def run() -> None:
        rewards = iter(REWARDS)
        history: Any = None
        for prompt in (QUESTION, FOLLOW_UP):
            async with agent.iter(prompt, message_history=history) as steps:
                async for node in steps:
                    # A CallToolsNode holds a model response: its request span has ended.
                    if Agent.is_call_tools_node(node):
                        emit_reward(next(rewards))
            assert steps.result is not None
            history = steps.result.all_messages()

    asyncio.run(run())


def run_openlit(model_url: str, tracer_provider: Any) -> None:
    import openai
    import openlit

    from lightning_otlp.sdk import emit_reward

    # It finds the global providers set up above and adds to them.
    openlit.init(disable_metrics=True, capture_message_content=True)
    client = openai.OpenAI(base_url=model_url, api_key="not-needed", max_retries=0)
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": QUESTION},
    ]
    first = client.chat.completions.create(
        model="fake-model", messages=messages, tools=[WEATHER_TOOL]
    )
    emit_reward(REWARDS[0])
    call = first.choices[0].message.tool_calls[0]
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": TOOL_RESULT})
    second = client.chat.completions.create(
        model="fake-model", messages=messages, tools=[WEATHER_TOOL]
    )
    emit_reward(REWARDS[1])
    messages.append({"role": "assistant", "content": second.choices[0].message.content})
    messages.append({"role": "user", "content": FOLLOW_UP})
    client.chat.completions.create(model="fake-model", messages=messages)
    emit_reward(REWARDS[2])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("framework", choices=sorted(_ENV))
    parser.add_argument("--model-url", required=True)
    parser.add_argument("--endpoint")
    parser.add_argument("--record")
    args = parser.parse_args(argv)
    os.environ.update(_ENV[args.framework])

    from opentelemetry import _logs, trace
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs import export as logs_export
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from lightning_otlp.sdk import RolloutSpanProcessor, rollout

    resource = Resource.create({"service.name": f"framework-agent-{args.framework}"})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(RolloutSpanProcessor())
    logger_provider = LoggerProvider(resource=resource)
    if args.record:
        spans_out: Any = InMemorySpanExporter()
        memory_logs = getattr(logs_export, "InMemoryLogRecordExporter", None)
        logs_out: Any = (memory_logs or logs_export.InMemoryLogExporter)()
    else:
        if not args.endpoint:
            raise SystemExit("--endpoint is needed unless --record is given")
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        base = args.endpoint.rstrip("/")
        spans_out = OTLPSpanExporter(endpoint=base + "/v1/traces")
        logs_out = OTLPLogExporter(endpoint=base + "/v1/logs")
    # Simple processors: each span is sent as it ends, so no exporter's timing decides anything.
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans_out))
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs_out))
    # rollout(), emit_reward() and the frameworks use the global providers, as an agent would.
    trace.set_tracer_provider(tracer_provider)
    _logs.set_logger_provider(logger_provider)

    with rollout(input={"question": QUESTION}, mode="train") as ids:
        if args.framework.startswith("litellm"):
            run_litellm(args.model_url, tracer_provider, steps=args.framework == "litellm-step")
        elif args.framework.startswith("pydantic-ai-v"):
            run_pydantic_ai(args.model_url, tracer_provider, int(args.framework.rsplit("v", 1)[1]))
        else:
            run_openlit(args.model_url, tracer_provider)

    tracer_provider.force_flush(10_000)
    logger_provider.force_flush(10_000)
    if args.record:
        from agent import record  # beside this file: the same recording as the GenAI agents'

        record(args.record, spans_out.get_finished_spans(), logs_out.get_finished_logs())
    tracer_provider.shutdown()
    logger_provider.shutdown()
    print(json.dumps({"rollout_id": ids.rollout_id}), flush=True)
    os._exit(0)  # some frameworks leave worker threads that hold the exit up


if __name__ == "__main__":
    sys.exit(main())
