"""Golden files: spans and log records recorded from the real instrumentations, translated.

Each tests/golden/<convention>/<case>.json holds what one real instrumentation's OTLP exporters
sent for one rollout of tests/genai/agent.py (or tests/node/vercel_agent.mjs): two chat calls
(a tool call, then the answer), an embedding call, an HTTP span and two rewards. The agent
frameworks' cases (tests/genai/framework_agent.py: LiteLLM, pydantic-ai, OpenLIT) make three
calls (a tool call, the answer to the tool's result, a plain follow-up), a reward after each.
The case goes through the receiver's own path (decode, route, SQLite store, GenAI logs joined)
and its model calls must read back in Agent Lightning's shape, as <case>.expected.json says.

``LIGHTNING_OTLP_UPDATE_GOLDEN=1`` rewrites the expected files (review the diff).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.json_format import ParseDict
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest as PB2ExportLogsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest as PB2ExportTraceServiceRequest,
)

from lightning_otlp.receiver.decode import attribute_maps, decode_traces
from lightning_otlp.receiver.route import RoutingConfig, route
from lightning_otlp.store import SQLiteStore
from lightning_otlp.store.logs import log_rows
from lightning_otlp.translate import names
from lightning_otlp.translate.otlp import span_encloses_call

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p for p in GOLDEN.glob("*/*.json") if not p.name.endswith(".expected.json"))
UPDATE = os.environ.get("LIGHTNING_OTLP_UPDATE_GOLDEN") == "1"
# Attributes translation writes (and so what Agent Lightning reads); the rest are the source's.
_AGL_PREFIXES = (
    names.AGL_PROMPT + ".",
    names.AGL_COMPLETION + ".",
    names.AGL_REQUEST_FUNCTIONS + ".",
    "lightning_otlp.",
)
# Directories of the agent frameworks' cases: three calls, rewards 0.1, 0.2 and 0.3.
FRAMEWORKS = {"litellm", "pydantic_ai", "openlit"}
# Cases whose source kept a vLLM server's token ids.
WITH_TOKEN_IDS = {
    "openinference/openai_vllm_token_ids",
    "litellm/callbacks_otel",
    "litellm/step_spans",
    "litellm/request_span",
}
_AGL_KEYS = {
    names.AGL_RESPONSE_ID,
    names.AGL_REQUEST_MODEL,
    names.AGL_RESPONSE_MODEL,
    names.AGL_PROMPT_TOKEN_IDS,
    names.AGL_RESPONSE_TOKEN_IDS,
}


def load_case(
    path: Path,
) -> tuple[PB2ExportTraceServiceRequest, PB2ExportLogsServiceRequest | None]:
    data = json.loads(path.read_text())
    if "otlp_json" in data:  # Node.js: OTLP/JSON as its exporter sends it (hex ids)
        traces = decode_traces(json.dumps(data["otlp_json"]).encode(), "application/json")
    else:  # Python: protobuf's JSON mapping of the exporter's request
        traces = ParseDict(data["traces"], PB2ExportTraceServiceRequest())
    logs = data.get("logs")
    return traces, ParseDict(logs, PB2ExportLogsServiceRequest()) if logs else None


def read_back(path: Path, *, logs_first: bool = False, raw: bool = False) -> list[dict[str, Any]]:
    traces, logs = load_case(path)
    store = SQLiteStore(":memory:")
    store.open()
    try:
        if logs is not None and logs_first:
            store.write_logs(log_rows(logs).rows)
        store.write(route(traces, RoutingConfig()))
        if logs is not None and not logs_first:
            store.write_logs(log_rows(logs).rows)
        return list(store.spans(raw=raw))
    finally:
        store.close()


def summary(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for record in records:
        attrs = record["attributes"]
        if names.ORIGINAL_NAME not in attrs:
            out.append({"name": record["name"]})
            continue
        out.append(
            {
                "name": record["name"],
                "attributes": {
                    k: v
                    for k, v in sorted(attrs.items())
                    if k in _AGL_KEYS or k.startswith(_AGL_PREFIXES)
                },
            }
        )
    return out


@pytest.mark.parametrize("path", CASES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_golden(path: Path) -> None:
    got = summary(read_back(path))
    expected_path = path.with_suffix(".expected.json")
    if UPDATE:
        expected_path.write_text(json.dumps(got, indent=1, ensure_ascii=False) + "\n")
    assert got == json.loads(expected_path.read_text())


@pytest.mark.parametrize("path", CASES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_two_model_calls_with_text_and_tool_calls(path: Path) -> None:
    calls = [r for r in read_back(path) if r["name"] == names.AGL_LLM_CALL_NAME]
    framework = path.parent.name in FRAMEWORKS
    assert len(calls) == (3 if framework else 2), [r["name"] for r in read_back(path)]
    first, second = (c["attributes"] for c in calls[:2])
    # The first call asks for the weather tool, the second answers with its result.
    assert first["gen_ai.prompt.0.role"] == "system"
    assert first["gen_ai.prompt.1.content"] == "What is the weather in Paris?"
    assert first["gen_ai.completion.0.tool_calls.0.name"] == "get_weather"
    assert json.loads(first["gen_ai.completion.0.tool_calls.0.arguments"]) == {"city": "Paris"}
    assert second["gen_ai.completion.0.content"].startswith("Answer ")
    assert any(
        k.endswith(".role") and v == "tool"
        for k, v in second.items()
        if k.startswith("gen_ai.prompt.")
    )
    if framework:
        # The tool's result text, whatever key the framework kept it under, and a plain third call.
        assert "Sunny, 21 C" in second.values()
        third = calls[2]["attributes"]
        assert third["gen_ai.completion.0.content"].startswith("Answer ")
        assert not any(".tool_calls." in k for k in third if k.startswith("gen_ai.completion."))
    # OpenLLMetry 0.33 recorded no response id.
    assert (
        first.get("gen_ai.response.id") != second.get("gen_ai.response.id") or "0_33" in path.name
    )


@pytest.mark.parametrize("path", CASES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_deterministic_and_lossless(path: Path) -> None:
    translated = read_back(path)
    assert translated == read_back(path, logs_first=True)
    raw = read_back(path, raw=True)
    assert [r["span_id"] for r in raw] == [r["span_id"] for r in translated]
    for before, after in zip(raw, translated, strict=False):
        if before["name"] == after["name"]:
            assert before == after  # not a model call: untouched
            continue
        attrs = after["attributes"]
        assert attrs[names.ORIGINAL_NAME] == before["name"]
        for key, value in before["attributes"].items():
            kept = attrs.get(key, attrs.get(names.MOVED_PREFIX + key))
            # Only Agent Lightning's own keys may be rewritten (with the same meaning).
            assert kept == value or key in _AGL_KEYS or key.startswith(_AGL_PREFIXES), key


def test_token_ids_only_where_the_source_has_them() -> None:
    import ast

    for path in CASES:
        case = f"{path.parent.name}/{path.stem}"
        for record in read_back(path):
            attrs = record["attributes"]
            if case not in WITH_TOKEN_IDS or record["name"] != names.AGL_LLM_CALL_NAME:
                assert "prompt_token_ids" not in attrs and "response_token_ids" not in attrs
            elif path.parent.name == "openinference":
                raw = json.loads(attrs["output.value"])
                assert attrs["prompt_token_ids"] == raw["prompt_token_ids"]
                assert attrs["response_token_ids"] == raw["choices"][0]["token_ids"]
            else:  # LiteLLM's raw request span: Python reprs
                prompt = ast.literal_eval(attrs["llm.openai.prompt_token_ids"])
                assert attrs["prompt_token_ids"] == prompt
                choices = ast.literal_eval(attrs["llm.openai.choices"])
                assert attrs["response_token_ids"] == choices[0]["token_ids"]


@pytest.mark.agl
def test_agent_lightning_makes_one_triplet_per_call_with_the_reward() -> None:
    from tests.genai.triplets import adapt

    by_case = {f"{p.parent.name}/{p.stem}": read_back(p) for p in CASES}
    result = adapt(by_case)
    for case, got in result.items():
        triplets = got["triplets"]
        if case.split("/")[0] in FRAMEWORKS:
            check_framework_triplets(case, triplets, token_ids=case in WITH_TOKEN_IDS)
            continue
        assert len(triplets) == 2, (case, triplets)
        first, second = triplets
        assert first["tool_calls"] == ["get_weather"], case
        assert "What is the weather in Paris?" in first["prompt_text"], case
        assert second["response_text"][0].startswith("Answer "), case
        # Rewards go to the latest call that ended before them. The Python agents reward each
        # call (0.5 after the tool call, 1.0 after the answer); the Node.js one only the answer.
        assert second["reward"] == 1.0, case
        assert first["reward"] == (None if "vercel" in case else 0.5), case
        has_ids = case in WITH_TOKEN_IDS
        for t in triplets:
            assert (
                bool(t["prompt_token_ids"]) == has_ids and bool(t["response_token_ids"]) == has_ids
            )
        if "0_33" in case:
            # Old OpenLLMetry's embedding span (not a model call, left as it is) has
            # gen_ai.prompt.0.content without a role, which TraceToMessages cannot read.
            continue
        # TraceToMessages also counts any span with gen_ai.request.* (an embedding call, say).
        assert got["messages"] >= 2, case


def check_framework_triplets(case: str, triplets: list[dict[str, Any]], *, token_ids: bool) -> None:
    """Three complete triplets: prompt and response text, the tool call, the tool's result in
    the next prompt, each call's own reward, token ids where the framework kept them."""
    assert len(triplets) == 3, (case, triplets)
    first, second, third = triplets
    assert "What is the weather in Paris?" in first["prompt_text"], case
    assert first["tool_calls"] == ["get_weather"], case
    assert "Sunny, 21 C" in second["prompt_text"], case
    assert second["response_text"][0].startswith("Answer "), case
    assert "Thanks. Should I take an umbrella?" in third["prompt_text"], case
    assert third["response_text"][0].startswith("Answer ") and not third["tool_calls"], case
    assert [t["reward"] for t in triplets] == [0.1, 0.2, 0.3], case
    assert len({t["response_id"] for t in triplets}) == 3, case
    for t in triplets:
        assert bool(t["prompt_token_ids"]) == token_ids == bool(t["response_token_ids"]), case


@pytest.mark.parametrize("path", CASES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_forwarded_bytes_carry_the_same_view(path: Path) -> None:
    """What the forwarder sends (stored bytes, translated) reads as the records do."""
    import sqlite3

    from opentelemetry.proto.trace.v1.trace_pb2 import Span as PB2Span

    from lightning_otlp.otlp import attributes
    from lightning_otlp.store.logs import span_events
    from lightning_otlp.store.records import enclosing_spans, resource_bodies
    from lightning_otlp.translate.otlp import translate_span_bytes

    traces, logs = load_case(path)
    store = SQLiteStore(":memory:")
    store.open()
    try:
        store.write(route(traces, RoutingConfig()))
        if logs is not None:
            store.write_logs(log_rows(logs).rows)
        conn: sqlite3.Connection = store._connection()
        blobs = list(conn.execute("SELECT span, resource_id FROM spans ORDER BY sequence_id"))
        records = {r["span_id"]: r for r in store.spans()}
        for blob, resource_id in blobs:
            sent = PB2Span.FromString(
                translate_span_bytes(
                    blob,
                    lambda t, s: span_events(conn, t, s),
                    lambda rid=resource_id: resource_bodies(conn, [rid])[rid],
                    lambda t, s: (t, s) in enclosing_spans(conn, [t]),
                )
            )
            record = records[sent.span_id.hex()]
            assert sent.name == record["name"]
            assert attributes(sent.attributes) == record["attributes"]
            assert [e.name for e in sent.events] == [e["name"] for e in record["events"]]
    finally:
        store.close()


def _millisecond_clock_rollout(call_start_ns: int) -> PB2ExportTraceServiceRequest:
    """Two model calls and their rewards as OpenTelemetry JS 2.x times them: each start at
    ``Date.now()`` (whole milliseconds), each end that start plus a sub-millisecond duration.
    Each reward starts right after its call ended, in the millisecond the call's end falls in."""
    from .payloads import make_request, make_span

    spans = []
    for i, (duration, reward) in enumerate([(46_160_000, 1.0), (23_700_000, 0.0)]):
        start = call_start_ns + i * 100_000_000
        call = {
            names.AI_OPERATION_ID: "ai.generateText.doGenerate",
            names.AI_RESPONSE_TEXT: f"answer {i}",
            names.AI_RESPONSE_ID: f"call-{i}",
        }
        spans.append(make_span("ai.generateText.doGenerate", attributes=call, start_ns=start))
        spans[-1].end_time_unix_nano = start + duration
        ended = start + duration
        rewarded = {
            "agentlightning.reward.0.name": "primary",
            "agentlightning.reward.0.value": reward,
        }
        spans.append(
            make_span(
                "agentlightning.annotation",
                attributes=rewarded,
                start_ns=ended - ended % 1_000_000,
                duration_ns=24_000,
            )
        )
    return make_request(
        spans,
        {
            "agentlightning.rollout_id": "ro-000000000001",
            "agentlightning.attempt_id": "at-00000001",
        },
    )


def _stored(request: PB2ExportTraceServiceRequest) -> tuple[list[dict[str, Any]], list[bytes]]:
    """The records read back, and the bytes the forwarder would send for each span."""
    from lightning_otlp.translate.otlp import translate_span_bytes

    store = SQLiteStore(":memory:")
    store.open()
    try:
        store.write(route(request, RoutingConfig()))
        blobs = [b for (b,) in store._connection().execute("SELECT span FROM spans ORDER BY rowid")]
        return list(store.spans()), [translate_span_bytes(b) for b in blobs]
    finally:
        store.close()


def test_a_call_timed_by_a_millisecond_clock_ends_before_its_reward_starts() -> None:
    from opentelemetry.proto.trace.v1.trace_pb2 import Span as PB2Span

    records, sent = _stored(_millisecond_clock_rollout(1_796_433_764_228_000_000))
    calls = [r for r in records if r["name"] == "openai.chat.completion"]
    rewards = [r for r in records if r["name"] == "agentlightning.annotation"]
    assert len(calls) == len(rewards) == 2
    for call, reward in zip(calls, rewards, strict=True):
        # Received as ending 0.16 and 0.7 ms after its reward started; read at the start's
        # resolution, it ends in the millisecond its reward started.
        assert call["end_time"] == reward["start_time"]
    forwarded = [PB2Span.FromString(b) for b in sent]
    by_name = {s.name: s for s in forwarded[2:]}
    assert by_name["openai.chat.completion"].end_time_unix_nano == (
        by_name["agentlightning.annotation"].start_time_unix_nano
    )


def test_a_call_timed_finer_than_milliseconds_keeps_its_end() -> None:
    records, _ = _stored(_millisecond_clock_rollout(1_796_433_764_228_000_123))
    calls = [r for r in records if r["name"] == "openai.chat.completion"]
    assert [c["end_time"] for c in calls] == [
        (1_796_433_764_228_000_123 + 46_160_000) / 1e9,
        (1_796_433_764_328_000_123 + 23_700_000) / 1e9,
    ]


@pytest.mark.agl
def test_agent_lightning_gives_each_reward_of_a_millisecond_clock_to_its_call() -> None:
    from tests.genai.triplets import adapt

    records, _ = _stored(_millisecond_clock_rollout(1_796_433_764_228_000_000))
    triplets = adapt({"rollout": records})["rollout"]["triplets"]
    assert [(t["response_id"], t["reward"]) for t in triplets] == [("call-0", 1.0), ("call-1", 0.0)]


@pytest.mark.parametrize("path", CASES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_routing_tells_calls_from_the_attribute_maps_as_from_the_bytes(path: Path) -> None:
    """Routing asks which spans are model calls of the attribute maps it decoded in C
    (``otlp.MapAttributes``); every recorded span gets the answer its stored bytes give."""
    traces, _ = load_case(path)
    data = traces.SerializeToString()
    maps = attribute_maps(data)
    assert maps is not None
    answers = []
    for r, resource_spans in enumerate(traces.resource_spans):
        for s, scope_spans in enumerate(resource_spans.scope_spans):
            for i, span in enumerate(scope_spans.spans):
                blob = span.SerializeToString()
                by_map = span_encloses_call(span.name, blob, maps[r][s][i])
                assert by_map == span_encloses_call(span.name, blob), span.name
                answers.append(by_map)
    assert True in answers  # every case records model calls
