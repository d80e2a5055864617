"""A small tool-using agent on the real OpenAI SDK, traced by one real GenAI instrumentation.

Runs in the GenAI environment (``make genai-env``). One rollout: a chat call that asks for a tool,
a reward of 0.5, an embedding call and a plain HTTP client span (neither is a model call), a second
chat call with the tool's result, a reward of 1.0. Prints the rollout id as JSON on stdout.

    python agent.py INSTRUMENTATION --model-url URL (--endpoint URL --protocol grpc|http
        [--logs-first | --spans-first] [--pause] | --record FILE)

INSTRUMENTATION: ``openai-v2`` (OTel's, content in one log record per message), ``openai-v2-span``
(the latest experimental conventions, content on the span), ``openai-v2-event`` (the same with
content in one ``gen_ai.client.inference.operation.details`` log record), ``openllmetry``,
``openinference``.
With ``--pause`` the agent exports one signal, prints ``paused`` and waits for a line on stdin
before it exports the other (so a test can restart the receiver in between).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

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
SYSTEM = "You are a helpful weather assistant."
QUESTION = "What is the weather in Paris?"

_ENV: dict[str, dict[str, str]] = {
    "openai-v2": {"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"},
    "openai-v2-span": {
        "OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental",
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "SPAN_ONLY",
    },
    "openai-v2-event": {
        "OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental",
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "EVENT_ONLY",
    },
    "openllmetry": {"TRACELOOP_TRACE_CONTENT": "true"},
    "openinference": {},
}


def instrument(name: str, tracer_provider: Any, logger_provider: Any) -> None:
    if name.startswith("openai-v2"):
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

        OpenAIInstrumentor().instrument(
            tracer_provider=tracer_provider, logger_provider=logger_provider
        )
    elif name == "openllmetry":
        from opentelemetry.instrumentation.openai import OpenAIInstrumentor as Traceloop

        Traceloop().instrument(tracer_provider=tracer_provider)
    elif name == "openinference":
        from openinference.instrumentation.openai import OpenAIInstrumentor as OpenInference

        OpenInference().instrument(tracer_provider=tracer_provider)
    else:
        raise SystemExit(f"unknown instrumentation {name!r}")


def run_agent(
    model_url: str, tracer_provider: Any, rollout_id: str | None, attempt_id: str | None
) -> str:
    import openai
    from opentelemetry.trace import SpanKind

    from lightning_otlp.sdk import emit_reward, rollout

    client = openai.OpenAI(base_url=model_url, api_key="not-needed", max_retries=0)
    tracer = tracer_provider.get_tracer("genai-test-agent")
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": QUESTION},
    ]
    with rollout(rollout_id, attempt_id, input={"question": QUESTION}, mode="train") as ids:
        first = client.chat.completions.create(
            model="fake-model", messages=messages, tools=[WEATHER_TOOL]
        )
        call = first.choices[0].message.tool_calls[0]
        emit_reward(0.5)
        client.embeddings.create(model="fake-embedding", input=QUESTION)
        with tracer.start_as_current_span("POST", kind=SpanKind.CLIENT) as http:
            http.set_attribute("http.request.method", "POST")
            http.set_attribute("url.full", model_url + "/chat/completions")
            http.set_attribute("http.response.status_code", 200)
        messages.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {
                            "name": call.function.name,
                            "arguments": call.function.arguments,
                        },
                    }
                ],
            }
        )
        messages.append({"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"})
        client.chat.completions.create(model="fake-model", messages=messages, tools=[WEATHER_TOOL])
        emit_reward(1.0)
    return ids.rollout_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("instrumentation", choices=sorted(_ENV))
    parser.add_argument("--model-url", required=True)
    parser.add_argument("--endpoint")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="http")
    parser.add_argument("--record")
    order = parser.add_mutually_exclusive_group()
    order.add_argument("--logs-first", action="store_true")
    order.add_argument("--spans-first", action="store_true")
    parser.add_argument("--pause", action="store_true")
    # A rollout that already exists (a runner's, on a LightningStore server); new ids if not given.
    parser.add_argument("--rollout-id")
    parser.add_argument("--attempt-id")
    args = parser.parse_args(argv)
    os.environ.update(_ENV[args.instrumentation])

    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs import export as logs_export
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, SimpleLogRecordProcessor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from lightning_otlp.sdk import RolloutSpanProcessor

    resource = Resource.create({"service.name": f"genai-agent-{args.instrumentation}"})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(RolloutSpanProcessor())
    logger_provider = LoggerProvider(resource=resource)
    if args.record:
        spans_out: Any = InMemorySpanExporter()
        # Renamed in newer SDKs; older ones (pinned by older instrumentations) have the first.
        memory_logs = getattr(logs_export, "InMemoryLogRecordExporter", None)
        logs_out: Any = (memory_logs or logs_export.InMemoryLogExporter)()
        tracer_provider.add_span_processor(SimpleSpanProcessor(spans_out))
        logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs_out))
    else:
        span_exporter, log_exporter = _exporters(args.protocol, args.endpoint)
        # Long delays: this process decides which signal goes first, by flushing it.
        tracer_provider.add_span_processor(
            BatchSpanProcessor(span_exporter, schedule_delay_millis=60_000)
        )
        logger_provider.add_log_record_processor(
            BatchLogRecordProcessor(log_exporter, schedule_delay_millis=60_000)
        )
    # rollout() and emit_reward() use the global provider, as an agent's own code would.
    from opentelemetry import _logs, trace

    trace.set_tracer_provider(tracer_provider)
    _logs.set_logger_provider(logger_provider)
    instrument(args.instrumentation, tracer_provider, logger_provider)
    rollout_id = run_agent(args.model_url, tracer_provider, args.rollout_id, args.attempt_id)

    if args.record:
        record(args.record, spans_out.get_finished_spans(), logs_out.get_finished_logs())
    else:
        first, second = (
            (logger_provider, tracer_provider)
            if args.logs_first
            else (tracer_provider, logger_provider)
        )
        if not first.force_flush(10_000):
            return 3
        if args.pause:
            print("paused", flush=True)
            sys.stdin.readline()
        if not second.force_flush(10_000):
            return 3
    tracer_provider.shutdown()
    logger_provider.shutdown()
    print(json.dumps({"rollout_id": rollout_id}), flush=True)
    return 0


def _exporters(protocol: str, endpoint: str | None) -> tuple[Any, Any]:
    if not endpoint:
        raise SystemExit("--endpoint is needed unless --record is given")
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        target = endpoint.split("://", 1)[-1]
        return OTLPSpanExporter(endpoint=target, insecure=True), OTLPLogExporter(
            endpoint=target, insecure=True
        )
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HTTPLogs
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HTTPSpans,
    )

    base = endpoint.rstrip("/")
    return HTTPSpans(endpoint=base + "/v1/traces"), HTTPLogs(endpoint=base + "/v1/logs")


def record(path: str, spans: Any, logs: Any) -> None:
    """The spans and log records as the OTLP exporters would send them (protobuf JSON)."""
    from google.protobuf.json_format import MessageToDict
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    payload = {
        "traces": MessageToDict(encode_spans(spans)),
        "logs": MessageToDict(encode_logs(list(logs))) if logs else None,
    }
    with open(path, "w") as out:
        json.dump(payload, out, indent=1, sort_keys=True)
        out.write("\n")


if __name__ == "__main__":
    sys.exit(main())
