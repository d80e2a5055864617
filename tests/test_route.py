"""Routing order, rollout and attempt creation, and sequence ids, through the real pipeline."""

from __future__ import annotations

import json
import os

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceResponse as PB2ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PB2Span

from lightning_otlp import ids
from lightning_otlp.batch import MAX_SEQUENCE_ID, Outcome, SpanRow
from lightning_otlp.receiver import route as route_module
from lightning_otlp.receiver.decode import PROTOBUF
from lightning_otlp.receiver.pipeline import Pipeline
from lightning_otlp.receiver.route import RoutingConfig
from lightning_otlp.store import SQLiteStore
from lightning_otlp.store.base import StoreOptions
from lightning_otlp.wiring import lightning_api

from .payloads import length_delimited, make_request, make_span
from .support import validate_with_agl

RID, AID = "ro-0123456789ab", "at-01234567"


def send(
    pipeline: Pipeline, spans: list, resource: dict | None = None
) -> PB2ExportTraceServiceResponse:
    return pipeline.export_traces(make_request(spans, resource).SerializeToString(), None, PROTOBUF)


def by_name(store: SQLiteStore) -> dict[str, dict]:
    return {s["name"]: s for s in store.spans()}


def test_span_attributes_win_over_resource(pipeline: Pipeline, store: SQLiteStore) -> None:
    res = {
        "agentlightning.rollout_id": "ro-resource0000",
        "agentlightning.attempt_id": "at-res00000",
    }
    send(
        pipeline,
        [
            make_span(
                "own",
                attributes={"agentlightning.rollout_id": RID, "agentlightning.attempt_id": AID},
            ),
            make_span("inherits"),
        ],
        res,
    )
    spans = by_name(store)
    assert (spans["own"]["rollout_id"], spans["own"]["attempt_id"]) == (RID, AID)
    assert (spans["inherits"]["rollout_id"], spans["inherits"]["attempt_id"]) == (
        "ro-resource0000",
        "at-res00000",
    )


def test_rollout_key_attributes(store: SQLiteStore) -> None:
    pipeline = Pipeline(store, RoutingConfig(rollout_keys=("session.id", "gen_ai.conversation.id")))
    try:
        send(
            pipeline,
            [make_span("a", attributes={"session.id": "s-1"}), make_span("b")],
            {"session.id": "s-2"},
        )
        send(pipeline, [make_span("c", attributes={"gen_ai.conversation.id": "c-9"})])
        send(pipeline, [make_span("d", attributes={"session.id": "s-1"})])
    finally:
        pipeline.close()
    spans = by_name(store)
    assert (
        spans["a"]["rollout_id"]
        == spans["d"]["rollout_id"]
        == ids.rollout_id_for_key("session.id", "s-1")
    )
    assert spans["b"]["rollout_id"] == ids.rollout_id_for_key("session.id", "s-2")
    assert spans["c"]["rollout_id"] == ids.rollout_id_for_key("gen_ai.conversation.id", "c-9")
    assert spans["a"]["attempt_id"] == spans["d"]["attempt_id"]
    rollouts = {r["rollout_id"]: r for r in store.rollouts()}
    assert rollouts[spans["a"]["rollout_id"]]["metadata"]["lightning_otlp"]["session.id"] == "s-1"


@pytest.mark.agl
def test_fallback_trace_makes_one_rollout_per_trace(pipeline: Pipeline, store: SQLiteStore) -> None:
    root = make_span("root")
    child = make_span("child", trace_id=root.trace_id, parent_id=root.span_id)
    other = make_span("other")
    send(pipeline, [root, other])
    send(pipeline, [child])
    spans = by_name(store)
    assert (
        spans["root"]["rollout_id"]
        == spans["child"]["rollout_id"]
        == ids.rollout_id_for_trace(root.trace_id.hex())
    )
    assert spans["other"]["rollout_id"] != spans["root"]["rollout_id"]
    derived = ids.rollout_id_for_trace("ab" * 16)
    # a whole 128-bit digest: 10^9 traces collide with a chance near 10^-21
    assert derived.startswith("ro-") and int(derived[3:], 16).bit_length() > 100
    assert len(derived) == 35 and derived == ids.rollout_id_for_trace("ab" * 16)
    assert len(ids.rollout_id_for_key("session.id", "s")) == 35
    assert validate_with_agl("AttemptedRollout", list(store.rollouts()))


def test_fallback_reject_counts_partial_success(store: SQLiteStore) -> None:
    pipeline = Pipeline(store, RoutingConfig(fallback="reject"))
    try:
        answer = send(
            pipeline,
            [make_span("x"), make_span("y", attributes={"agentlightning.rollout_id": RID})],
        )
    finally:
        pipeline.close()
    assert answer.partial_success.rejected_spans == 1
    assert "reject" in answer.partial_success.error_message
    assert [s["name"] for s in store.spans()] == ["y"]


def test_rollout_without_attempt_gets_latest_attempt(
    pipeline: Pipeline, store: SQLiteStore
) -> None:
    send(pipeline, [make_span("first", attributes={"agentlightning.rollout_id": RID})])
    created = ids.attempt_id_for(RID, 1)
    assert by_name(store)["first"]["attempt_id"] == created
    send(
        pipeline,
        [
            make_span(
                "second",
                attributes={"agentlightning.rollout_id": RID, "agentlightning.attempt_id": AID},
            )
        ],
    )
    send(pipeline, [make_span("third", attributes={"agentlightning.rollout_id": RID})])
    spans = by_name(store)
    assert spans["second"]["attempt_id"] == AID
    assert spans["third"]["attempt_id"] == AID  # the latest attempt, number 2
    (rollout,) = list(store.rollouts())
    assert rollout["attempt"]["attempt_id"] == AID and rollout["attempt"]["sequence_id"] == 2
    assert rollout["status"] == rollout["attempt"]["status"] == "running"
    assert rollout["attempt"]["last_heartbeat_time"] is not None


def test_sequence_ids_follow_start_time_and_keep_explicit_ones(
    pipeline: Pipeline, store: SQLiteStore
) -> None:
    attrs = {"agentlightning.rollout_id": RID, "agentlightning.attempt_id": AID}
    send(
        pipeline,
        [
            make_span("late", attributes=attrs, start_ns=30_000),
            make_span("early", attributes=attrs, start_ns=10_000),
            make_span(
                "pinned",
                attributes={**attrs, "agentlightning.span_sequence_id": 40},
                start_ns=20_000,
            ),
            make_span("same-microsecond", attributes=attrs, start_ns=30_500),
        ],
    )
    # Arrives later but started first: its id still sorts before the others'.
    send(pipeline, [make_span("arrived-late", attributes=attrs, start_ns=5_000)])
    seq = {s["name"]: s["sequence_id"] for s in store.spans()}
    assert seq == {"arrived-late": 5, "early": 10, "late": 30, "same-microsecond": 31, "pinned": 40}
    names = [s["name"] for s in store.spans(RID, AID)]
    assert names == ["arrived-late", "early", "late", "same-microsecond", "pinned"]


def test_start_time_ids_never_repeat_in_an_attempt(pipeline: Pipeline, store: SQLiteStore) -> None:
    """A millisecond clock starts a root and its children in one tick; they arrive in three
    requests, and one id was issued by ``spans/next`` for a span still to come."""
    attrs = {"agentlightning.rollout_id": RID, "agentlightning.attempt_id": AID}
    tick = 1_796_433_764_228_000_000
    send(pipeline, [make_span("root", attributes=attrs, start_ns=tick)])
    api = lightning_api(store)
    assert api is not None
    issued = api.next_span_sequence_id(RID, AID)
    send(pipeline, [make_span(f"child-{i}", attributes=attrs, start_ns=tick) for i in range(3)])
    send(
        pipeline,
        [
            make_span("grandchild", attributes=attrs, start_ns=tick),
            make_span("at-issued", attributes=attrs, start_ns=issued * 1000),
        ],
    )
    seq = {s["name"]: s["sequence_id"] for s in store.spans()}
    assert len(set(seq.values())) == len(seq) == 6, seq
    assert issued not in seq.values()
    # The same tick: numbered from it, in arrival order.
    assert [seq[n] for n in ("root", "child-0", "child-1", "child-2", "grandchild")] == [
        tick // 1000 + i for i in range(5)
    ]


def test_counter_ids_count_arrivals_and_keep_explicit_ones() -> None:
    store = SQLiteStore(":memory:", StoreOptions(sequence_ids="counter"), synchronous="OFF")
    store.open()
    pipeline = Pipeline(store, RoutingConfig())
    try:
        attrs = {"agentlightning.rollout_id": RID, "agentlightning.attempt_id": AID}
        send(
            pipeline,
            [
                make_span("late", attributes=attrs, start_ns=30_000),
                make_span("early", attributes=attrs, start_ns=10_000),
            ],
        )
        explicit = {**attrs, "agentlightning.span_sequence_id": 40}
        send(pipeline, [make_span("pinned", attributes=explicit, start_ns=20_000)])
        api = lightning_api(store)
        assert api is not None
        assert api.next_span_sequence_id(RID, AID) == 41
        send(pipeline, [make_span("after", attributes=attrs, start_ns=5_000)])
        seq = {s["name"]: s["sequence_id"] for s in store.spans()}
        assert seq == {"late": 1, "early": 2, "pinned": 40, "after": 42}
    finally:
        pipeline.close()
        store.close()


def test_resource_sequence_id_and_string_values(pipeline: Pipeline, store: SQLiteStore) -> None:
    send(
        pipeline,
        [make_span("s", attributes={"agentlightning.attempt_id": AID})],
        {"agentlightning.rollout_id": RID, "agentlightning.span_sequence_id": "7"},
    )
    (span,) = store.spans()
    assert (span["rollout_id"], span["attempt_id"], span["sequence_id"]) == (RID, AID, 7)


def test_duplicate_spans_in_one_request_are_stored_once(
    pipeline: Pipeline, store: SQLiteStore
) -> None:
    span = make_span("dup", attributes={"agentlightning.rollout_id": RID})
    send(pipeline, [span, span])
    send(pipeline, [span])
    assert [s["name"] for s in store.spans()] == ["dup"]


@pytest.mark.agl
def test_rollout_span_fills_input_and_mode(pipeline: Pipeline, store: SQLiteStore) -> None:
    attrs = {
        "agentlightning.rollout_id": RID,
        "agentlightning.rollout.input": '{"question": "2+2?"}',
        "agentlightning.rollout.mode": "val",
    }
    send(pipeline, [make_span("agentlightning.rollout", attributes=attrs)])
    (rollout,) = validate_with_agl("AttemptedRollout", list(store.rollouts()))
    assert rollout["input"] == {"question": "2+2?"} and rollout["mode"] == "val"


def test_bad_fallback_is_rejected() -> None:
    with pytest.raises(ValueError):
        RoutingConfig(fallback="drop")  # type: ignore[arg-type]


# -- poison values: never an error, never a poisoned attempt --------------

POISON_SEQUENCE_IDS = [
    2**63 - 2,
    2**63 - 1,
    -1,
    float("inf"),
    1e300,
    2.5,
    "99999999999999999999",
    "-3",
    True,
]


@pytest.mark.parametrize("value", POISON_SEQUENCE_IDS, ids=repr)
def test_unusable_sequence_id_is_dropped_and_counted(
    pipeline: Pipeline, store: SQLiteStore, value: object
) -> None:
    attrs = {"agentlightning.rollout_id": RID, "agentlightning.attempt_id": AID}
    answer = send(
        pipeline,
        [
            make_span("poison", attributes={**attrs, "agentlightning.span_sequence_id": value}),
            make_span("honest", attributes={"agentlightning.rollout_id": "ro-00000000beef"}),
        ],
    )
    # Both spans stored; the unusable value is named in a warning, nothing is rejected.
    assert answer.partial_success.rejected_spans == 0
    assert "sequence" in answer.partial_success.error_message
    # The attempt is not poisoned: later spans, explicit or not, keep being stored.
    send(pipeline, [make_span("after", attributes=attrs)])
    send(
        pipeline, [make_span("pinned", attributes={**attrs, "agentlightning.span_sequence_id": 9})]
    )
    send(pipeline, [make_span("last", attributes=attrs)])
    seq = {s["name"]: s["sequence_id"] for s in store.spans()}
    assert set(seq) == {"poison", "honest", "after", "pinned", "last"}
    assert seq["pinned"] == 9
    assert seq["poison"] < seq["after"] < seq["last"] <= MAX_SEQUENCE_ID  # start-time ids
    assert pipeline.counters.dropped_values == {"grpc": 1}


def test_a_bad_resource_sequence_id_is_counted_per_span(
    pipeline: Pipeline, store: SQLiteStore
) -> None:
    resource = {"agentlightning.rollout_id": RID, "agentlightning.span_sequence_id": 1e300}
    answer = send(pipeline, [make_span("a"), make_span("b")], resource)
    assert answer.partial_success.rejected_spans == 0
    assert answer.partial_success.error_message.startswith("2 span(s)")
    assert all(0 < s["sequence_id"] <= MAX_SEQUENCE_ID for s in store.spans())
    assert len(list(store.spans())) == 2


def test_largest_kept_sequence_id_leaves_room_to_count_on(
    pipeline: Pipeline, store: SQLiteStore
) -> None:
    attrs = {"agentlightning.rollout_id": RID, "agentlightning.attempt_id": AID}
    top = {**attrs, "agentlightning.span_sequence_id": MAX_SEQUENCE_ID}
    answer = send(pipeline, [make_span("top", attributes=top)])
    assert not answer.partial_success.error_message
    # No start time: the attempt's counter issues the id.
    send(pipeline, [make_span("next", attributes=attrs, start_ns=0)])
    seq = {s["name"]: s["sequence_id"] for s in store.spans()}
    assert seq == {"top": MAX_SEQUENCE_ID, "next": MAX_SEQUENCE_ID + 1}


def test_rollout_input_nested_too_deep_is_kept_as_text(
    pipeline: Pipeline, store: SQLiteStore
) -> None:
    deep = "[" * 5000 + "]" * 5000
    attrs = {"agentlightning.rollout_id": RID, "agentlightning.rollout.input": deep}
    answer = send(
        pipeline,
        [
            make_span("agentlightning.rollout", attributes=attrs),
            make_span("other", attributes={"agentlightning.rollout_id": "ro-00000000beef"}),
        ],
    )
    assert answer.partial_success.rejected_spans == 0
    assert "input" in answer.partial_success.error_message
    rollouts = {r["rollout_id"]: r for r in store.rollouts()}
    assert rollouts[RID]["input"] == deep
    assert len(list(store.spans())) == 2
    # Nested, but within bounds: parsed as JSON.
    fine = {"agentlightning.rollout_id": RID, "agentlightning.rollout.input": "[[[1]]]"}
    assert not send(
        pipeline, [make_span("agentlightning.rollout", attributes=fine)]
    ).partial_success.error_message
    assert next(iter(store.rollouts()))["input"] == [[[1]]]


def test_non_finite_reward_is_dropped(pipeline: Pipeline, store: SQLiteStore) -> None:
    attrs = {"agentlightning.rollout_id": RID, "agentlightning.reward.0.value": float("nan")}
    answer = send(pipeline, [make_span("agentlightning.annotation", attributes=attrs)])
    assert "reward" in answer.partial_success.error_message
    assert store.summaries()[0]["reward"] is None


def test_resource_spans_without_spans_cost_no_resource_work() -> None:
    from lightning_otlp.receiver.decode import decode_traces
    from lightning_otlp.receiver.route import route

    empty = make_request([]).SerializeToString()  # a resource with attributes, no spans
    request = decode_traces(empty * 1000)
    assert len(request.resource_spans) == 1000
    batch = route(request, RoutingConfig())
    assert (batch.received, batch.resources) == (0, {})


def test_attributes_read_as_maps_route_as_the_attribute_scan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue

    from lightning_otlp.receiver.decode import decode_traces

    field = length_delimited
    key = field(1, b"agentlightning.rollout_id")
    first = field(2, AnyValue(string_value="ro-first0000000").SerializeToString())
    # A value field twice in one attribute merges; an attribute twice keeps its last value.
    merged = field(9, key + first + field(2, b""))
    replaced = field(9, key + first + field(2, AnyValue(int_value=7).SerializeToString()))
    again = field(9, key + field(2, AnyValue(string_value=RID).SerializeToString()))
    config = RoutingConfig(rollout_keys=("session.id",))
    spans = [
        make_span("merged").SerializeToString() + merged,
        make_span("replaced").SerializeToString() + replaced,
        make_span("twice").SerializeToString() + replaced + again,
        make_span("keyed", attributes={"session.id": 12}).SerializeToString(),
        make_span("plain").SerializeToString(),
        make_span(
            "typed",
            attributes={"agentlightning.rollout_id": RID, "agentlightning.span_sequence_id": "4"},
        ).SerializeToString(),
    ]
    resource = make_request([]).resource_spans[0].resource.SerializeToString()
    data = b"".join(
        field(1, field(1, resource) + field(2, b"".join(field(2, s) for s in half)))
        for half in (spans[:3], spans[3:])
    )
    request = decode_traces(data)
    as_maps = route_module.route(request, config, data)
    monkeypatch.setattr(route_module, "attribute_maps", lambda data: None)
    scanned = route_module.route(request, config, data)
    assert as_maps == scanned
    routed = {row.name: dest for dest, entries in as_maps.groups.items() for _, _, row in entries}
    assert routed["merged"][0] == "ro-first0000000"
    assert routed["replaced"][0] == "7"
    assert routed["twice"][0] == RID
    assert routed["keyed"][0] == ids.rollout_id_for_key("session.id", "12")
    assert routed["typed"][0] == RID


def test_json_export_routes_by_span_attributes(pipeline: Pipeline, store: SQLiteStore) -> None:
    from lightning_otlp.receiver.decode import JSON

    span = {
        "traceId": "0af7651916cd43dd8448eb211c80319c",
        "spanId": "b7ad6b7169203331",
        "name": "json",
        "startTimeUnixNano": "1700000000000000000",
        "attributes": [
            {"key": "agentlightning.rollout_id", "value": {"stringValue": RID}},
            {"key": "agentlightning.attempt_id", "value": {"stringValue": AID}},
        ],
    }
    doc = {"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}
    pipeline.export_traces(json.dumps(doc).encode(), None, JSON)
    (stored,) = store.spans()
    assert (stored["rollout_id"], stored["attempt_id"]) == (RID, AID)


def test_routed_spans_are_named_rows() -> None:
    """What crosses to a store reads by name, and is still the plain tuple a store splices."""
    parent = os.urandom(8)
    span = make_span(
        "named",
        parent_id=parent,
        start_ns=1_700_000_000_000_000_000,
        attributes={
            "agentlightning.rollout_id": RID,
            "agentlightning.attempt_id": AID,
            "agentlightning.span_sequence_id": 3,
            "agentlightning.attempt.status": "failed",
        },
    )
    span.status.code = 2
    request = make_request([span])
    batch = route_module.route(request, RoutingConfig())
    [(dest, [entry])] = batch.groups.items()
    assert dest == (RID, AID)
    start, sequence_id, row = entry  # batch.RoutedSpan: (start, sequence_id, row)
    assert isinstance(row, SpanRow)
    assert (start, sequence_id) == (1_700_000_000.0, 3)
    assert (row.trace_id, row.span_id, row.parent_id) == (span.trace_id, span.span_id, parent)
    assert (row.name, row.start_time, row.status_code) == ("named", 1_700_000_000.0, "ERROR")
    assert PB2Span.FromString(row.span) == span
    assert (*row,) == tuple(row) and len(row) == 9
    assert batch.outcomes[dest] == Outcome("failed", row.end_time)
