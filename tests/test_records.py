"""Records the store returns validate with agentlightning 0.3.0's own models."""

from __future__ import annotations

import pytest

from lightning_otlp.receiver.pipeline import Pipeline
from lightning_otlp.store import SQLiteStore

from .payloads import genai_request, length_delimited, make_request, make_span
from .support import validate_with_agl


@pytest.mark.agl
def test_records_validate_with_agentlightning(pipeline: Pipeline, store: SQLiteStore) -> None:
    root = make_span("root", attributes={"nested": {"a": 1, "b": [1, 2]}, "mixed": [1, "x"]})
    child = make_span(
        "child", trace_id=root.trace_id, parent_id=root.span_id, attributes={"b": b"\x01\x02"}
    )
    ev = child.events.add()
    ev.name = "tool.call"
    ev.time_unix_nano = child.start_time_unix_nano
    link = child.links.add()
    link.trace_id = root.trace_id
    link.span_id = root.span_id
    link.trace_state = "vendor=x"
    child.status.code = 2
    child.status.message = "boom"
    child.trace_state = "a=1,b=2"
    pipeline.export_traces(
        make_request([root, child]).SerializeToString(), None, "application/x-protobuf"
    )
    pipeline.export_traces(genai_request(20).SerializeToString(), None, "application/x-protobuf")

    spans = list(store.spans())
    rollouts = list(store.rollouts())
    assert len(spans) == 22
    validated = validate_with_agl("Span", spans)
    assert validated == spans
    assert validate_with_agl("AttemptedRollout", rollouts) == rollouts

    by_name = {s["name"]: s for s in spans}
    assert by_name["root"]["attributes"] == {"nested.a": 1, "nested.b": [1, 2], "mixed": '[1,"x"]'}
    c = by_name["child"]
    assert c["status"] == {"status_code": "ERROR", "description": "boom"}
    assert c["parent_id"] == root.span_id.hex() == c["parent"]["span_id"]
    assert c["context"]["trace_state"] == {"a": "1", "b": "2"}
    assert c["events"][0]["name"] == "tool.call"
    assert c["links"][0]["context"]["trace_state"] == {"vendor": "x"}
    assert c["attributes"] == {"b": "0102"}


def test_span_attributes_from_bytes_match_the_decoded_span() -> None:
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.trace.v1.trace_pb2 import Span as PB2Span

    from lightning_otlp.otlp import attributes, span_attributes

    span = make_span(
        "chat",
        attributes={
            "gen_ai.system": "openai",
            "gen_ai.usage.input_tokens": 812,
            "ratio": 0.5,
            "flag": True,
            "gen_ai.response.finish_reasons": ["stop"],
            "mixed": [1, "two"],
            "nested": {"a": {"b": [1, 2]}, "c": "d"},
            "long": "x" * 1000,
        },
    )
    span.attributes.add(key="raw", value=AnyValue(bytes_value=b"\x01\x02"))
    span.attributes.add(key="unset")
    span.attributes.add(key="gen_ai.system", value=AnyValue(string_value="anthropic"))
    # A value field twice in one attribute: the two values merge.
    merged = KeyValue(key="merged", value=AnyValue(string_value="first")).SerializeToString()
    blob = span.SerializeToString() + length_delimited(9, merged + length_delimited(2, b""))
    decoded = attributes(PB2Span.FromString(blob).attributes)
    assert decoded["merged"] == "first" and decoded["gen_ai.system"] == "anthropic"
    first = span_attributes(blob)
    assert first == decoded and list(first) == list(decoded)
    first["gen_ai.response.finish_reasons"].append("changed")
    again = span_attributes(blob)  # now from decoded attributes kept by their bytes
    assert again == decoded and list(again) == list(decoded)


@pytest.mark.parametrize(
    "value",
    [
        "text",
        "",
        "ünïcode ✓",
        True,
        False,
        0,
        812,
        -3,
        -(1 << 63),
        (1 << 63) - 1,
        0.5,
        -0.0,
        float("inf"),
        ["stop"],
        [1, 2],
        {"a": "b"},
        None,
    ],
)
def test_a_span_attribute_encoded_by_hand_is_what_protobuf_encodes(value: object) -> None:
    from opentelemetry.proto.common.v1.common_pb2 import KeyValue
    from opentelemetry.proto.trace.v1.trace_pb2 import Span as PB2Span

    from lightning_otlp.otlp import any_value, span_attribute

    expected = PB2Span(attributes=[KeyValue(key="k.é", value=any_value(value))])
    assert span_attribute("k.é", value) == expected.SerializeToString()
    # Appended to a span's bytes, it follows the attributes already there.
    span = make_span("chat", attributes={"first": 1})
    appended = PB2Span.FromString(span.SerializeToString() + span_attribute("k.é", value))
    assert [kv.key for kv in appended.attributes] == ["first", "k.é"]
    assert appended.attributes[1].value == any_value(value)
