"""Records the store returns validate with agentlightning 0.3.0's own models."""

from __future__ import annotations

import pytest

from lightning_otlp.receiver.pipeline import Pipeline
from lightning_otlp.store import SQLiteStore

from .payloads import genai_request, make_request, make_span
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
