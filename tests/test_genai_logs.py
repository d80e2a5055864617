"""GenAI log records: kept by the span they name, joined onto it whichever arrives first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest as PB2ExportLogsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from lightning_otlp.receiver.pipeline import Pipeline
from lightning_otlp.receiver.route import RoutingConfig
from lightning_otlp.store import SQLiteStore
from lightning_otlp.translate import names

from .payloads import make_request, make_span
from .test_translate import GOLDEN, load_case

CASE = GOLDEN / "otel_genai" / "openai_v2_log_events.json"
PB = "application/x-protobuf"


def _calls(store: SQLiteStore) -> list[dict[str, object]]:
    return [s["attributes"] for s in store.spans() if s["name"] == names.AGL_LLM_CALL_NAME]


def _export(pipeline: Pipeline, logs_first: bool) -> None:
    traces, logs = load_case(CASE)
    assert logs is not None
    steps = [
        lambda: pipeline.export_logs(logs.SerializeToString(), None, PB),
        lambda: pipeline.export_traces(traces.SerializeToString(), None, PB),
    ]
    for step in steps if logs_first else reversed(steps):
        answer = step()
        assert not answer.HasField("partial_success"), answer


def test_log_events_become_the_messages_of_their_span(pipeline: Pipeline) -> None:
    _export(pipeline, logs_first=False)
    first, second = _calls(pipeline.store)
    assert first["gen_ai.prompt.1.content"] == "What is the weather in Paris?"
    assert first["gen_ai.completion.0.tool_calls.0.name"] == "get_weather"
    assert str(second["gen_ai.completion.0.content"]).startswith("Answer ")


def test_logs_before_their_span_give_the_same_records(store: SQLiteStore) -> None:
    after = Pipeline(SQLiteStore(":memory:"), RoutingConfig())
    after.store.open()
    before = Pipeline(store, RoutingConfig())
    try:
        _export(after, logs_first=False)
        _export(before, logs_first=True)
        assert list(before.store.spans()) == list(after.store.spans())
    finally:
        after.close()
        after.store.close()
        before.close()


def test_a_retried_logs_request_is_not_joined_twice(pipeline: Pipeline) -> None:
    _export(pipeline, logs_first=True)
    once = list(pipeline.store.spans())
    _, logs = load_case(CASE)
    assert logs is not None
    pipeline.export_logs(logs.SerializeToString(), None, PB)
    assert list(pipeline.store.spans()) == once


def test_logs_survive_a_restart_before_their_span(tmp_path: Path) -> None:
    traces, logs = load_case(CASE)
    assert logs is not None
    path = str(tmp_path / "receiver.db")
    first = SQLiteStore(path)
    first.open()
    pipeline = Pipeline(first, RoutingConfig())
    pipeline.export_logs(logs.SerializeToString(), None, PB)
    pipeline.close()
    first.close()
    second = SQLiteStore(path)
    second.open()
    pipeline = Pipeline(second, RoutingConfig())
    try:
        pipeline.export_traces(traces.SerializeToString(), None, PB)
        calls = _calls(second)
        assert len(calls) == 2 and "gen_ai.prompt.0.content" in calls[0]
    finally:
        pipeline.close()
        second.close()


def test_other_log_records_are_answered_as_not_stored(pipeline: Pipeline) -> None:
    request = PB2ExportLogsServiceRequest()
    records = request.resource_logs.add().scope_logs.add().log_records
    app_log = records.add()  # an application log inside a span: not a GenAI event
    app_log.body.string_value = "hello"
    app_log.trace_id, app_log.span_id = b"\x01" * 16, b"\x02" * 8
    orphan = records.add()  # a GenAI event that names no span
    orphan.event_name = "gen_ai.user.message"
    kept = records.add()
    kept.event_name = "gen_ai.user.message"
    kept.trace_id, kept.span_id = b"\x01" * 16, b"\x02" * 8
    answer = pipeline.export_logs(request.SerializeToString(), None, PB)
    assert answer.partial_success.rejected_log_records == 2
    assert "GenAI events" in answer.partial_success.error_message


def test_raw_reads_ignore_joined_logs(pipeline: Pipeline) -> None:
    _export(pipeline, logs_first=True)
    raw = list(pipeline.store.spans(raw=True))
    assert all(s["name"] != names.AGL_LLM_CALL_NAME for s in raw)
    assert all(e["attributes"].get(names.LOG_SOURCE) != "log" for s in raw for e in s["events"])


def test_cli_reads_translated_by_default_raw_on_request(tmp_path: Path) -> None:
    traces, logs = load_case(CASE)
    assert logs is not None
    path = tmp_path / "cli.db"
    store = SQLiteStore(str(path))
    store.open()
    pipeline = Pipeline(store, RoutingConfig())
    try:
        pipeline.export_logs(logs.SerializeToString(), None, PB)
        pipeline.export_traces(traces.SerializeToString(), None, PB)
    finally:
        pipeline.close()
        store.close()

    def names_read(*args: str, env: dict[str, str] | None = None) -> list[str]:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "lightning_otlp",
                "spans",
                "--store",
                f"sqlite:///{path}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **(env or {})},
            check=True,
        )
        return [json.loads(line)["name"] for line in done.stdout.splitlines()]

    assert names_read().count(names.AGL_LLM_CALL_NAME) == 2
    assert names.AGL_LLM_CALL_NAME not in names_read("--raw")
    off = names_read(env={"LIGHTNING_OTLP_TRANSLATE": "false"})
    assert names.AGL_LLM_CALL_NAME not in off and "chat fake-model" in off


def test_hostile_but_valid_log_records_are_stored_and_read(pipeline: Pipeline) -> None:
    """Huge numbers, infinities and deep nesting in a GenAI log record: stored, read, no error."""
    span = make_span("chat m", attributes={"gen_ai.operation.name": "chat"})
    nested = AnyValue(string_value="deep")
    for key in ["k"] * 24 + ["content"]:  # 75 message levels: near protobuf's limit of 100
        outer = AnyValue()
        outer.kvlist_value.values.add(key=key, value=nested)
        nested = outer
    request = PB2ExportLogsServiceRequest()
    record = request.resource_logs.add().scope_logs.add().log_records.add()
    record.event_name = "gen_ai.user.message"
    record.trace_id, record.span_id = span.trace_id, span.span_id
    record.time_unix_nano = 2**64 - 1
    record.body.CopyFrom(nested)
    record.attributes.add(key="huge", value=AnyValue(int_value=2**63 - 1))
    record.attributes.add(key="inf", value=AnyValue(double_value=float("inf")))
    answer = pipeline.export_logs(request.SerializeToString(), None, PB)
    assert not answer.HasField("partial_success"), answer
    pipeline.export_traces(make_request([span]).SerializeToString(), None, PB)
    (stored,) = list(pipeline.store.spans())
    assert stored["name"] == names.AGL_LLM_CALL_NAME
    json.dumps(stored)  # the record, joined event included, is still plain JSON
