"""Trace affinity and the rollout lifecycle spans drive, through the real pipeline and store."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from lightning_otlp import ids
from lightning_otlp.receiver.decode import PROTOBUF
from lightning_otlp.receiver.pipeline import Pipeline
from lightning_otlp.receiver.route import RoutingConfig
from lightning_otlp.store import SQLiteStore
from lightning_otlp.wiring import open_store

from .payloads import make_request, make_span
from .support import validate_with_agl

RID, AID = "ro-00000000beef", "at-0000beef"
IDS = {"agentlightning.rollout_id": RID, "agentlightning.attempt_id": AID}
MS = 1_000_000


def send(pipeline: Pipeline, spans: list, resource: dict | None = None) -> None:
    pipeline.export_traces(make_request(spans, resource).SerializeToString(), None, PROTOBUF)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest) -> Iterator[SQLiteStore]:
    """Routing by trace affinity on both backends: in the embedded store's memory, and in a
    PostgreSQL table shared by every receiver."""
    url = "memory://" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    opened = open_store(url)
    opened.open()
    yield opened  # type: ignore[misc]
    opened.close()


def rollouts(store: SQLiteStore) -> dict[str, dict]:
    return {r["rollout_id"]: r for r in store.rollouts()}


def test_unbound_spans_after_the_binding_join_it(pipeline: Pipeline, store: SQLiteStore) -> None:
    root = make_span("runner", attributes=IDS)
    send(pipeline, [root])
    agent = make_span("agent", trace_id=root.trace_id, parent_id=root.span_id)
    send(pipeline, [agent], {"service.name": "ts-agent"})
    assert {(s["name"], s["rollout_id"], s["attempt_id"]) for s in store.spans()} == {
        ("runner", RID, AID),
        ("agent", RID, AID),
    }
    assert list(rollouts(store)) == [RID]


def test_binding_in_the_same_request_wins(pipeline: Pipeline, store: SQLiteStore) -> None:
    root = make_span("runner", attributes=IDS, start_ns=10 * MS)
    agent = make_span("agent", trace_id=root.trace_id, start_ns=20 * MS)
    send(pipeline, [agent, root])
    assert [(s["name"], s["rollout_id"], s["sequence_id"]) for s in store.spans()] == [
        ("runner", RID, 10_000),
        ("agent", RID, 20_000),
    ]


@pytest.mark.agl
def test_earlier_spans_move_when_the_binding_arrives(
    pipeline: Pipeline, store: SQLiteStore
) -> None:
    trace = make_span("x").trace_id
    early = [make_span(f"agent-{i}", trace_id=trace, start_ns=(20 + i) * MS) for i in (2, 0, 1)]
    send(pipeline, early[:2])
    send(pipeline, early[2:])
    auto = ids.rollout_id_for_trace(trace.hex())
    assert set(rollouts(store)) == {auto}  # queries inside the window see the auto rollout
    marker = make_span(
        "agentlightning.rollout.start", trace_id=trace, attributes=IDS, start_ns=10 * MS
    )
    send(pipeline, [marker])
    spans = list(store.spans())
    assert [(s["name"], s["rollout_id"], s["attempt_id"]) for s in spans] == [
        ("agentlightning.rollout.start", RID, AID),
        ("agent-0", RID, AID),
        ("agent-1", RID, AID),
        ("agent-2", RID, AID),
    ]
    # Re-issued from their start times (microseconds): the order they started in.
    assert [s["sequence_id"] for s in spans] == [10_000, 20_000, 21_000, 22_000]
    assert set(rollouts(store)) == {RID}  # the emptied auto rollout is gone
    assert store.affinity.counters.moved_spans == 3
    later = make_span("agent-late", trace_id=trace, start_ns=30 * MS)
    send(pipeline, [later])
    assert [s["sequence_id"] for s in store.spans() if s["name"] == "agent-late"] == [30_000]
    validate_with_agl("Span", list(store.spans()))


def test_binding_after_the_window_moves_nothing(
    store: SQLiteStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.affinity.window = 0.0
    pipeline = Pipeline(store)
    try:
        trace = make_span("x").trace_id
        send(pipeline, [make_span("agent", trace_id=trace)])
        with caplog.at_level(logging.WARNING, "lightning_otlp.affinity"):
            send(pipeline, [make_span("runner", trace_id=trace, attributes=IDS)])
        send(pipeline, [make_span("agent-after", trace_id=trace)])
    finally:
        pipeline.close()
    where = {s["name"]: s["rollout_id"] for s in store.spans()}
    assert where == {
        "agent": ids.rollout_id_for_trace(trace.hex()),
        "runner": RID,
        "agent-after": RID,
    }
    assert store.affinity.counters.late_bindings == 1
    assert "not moved" in caplog.text


def test_a_trace_never_bound_stays_in_its_auto_rollout(
    pipeline: Pipeline, store: SQLiteStore
) -> None:
    orphan = make_span("orphan")
    send(pipeline, [orphan])
    send(pipeline, [make_span("runner", attributes=IDS)])  # another trace
    assert {s["name"]: s["rollout_id"] for s in store.spans()}[
        "orphan"
    ] == ids.rollout_id_for_trace(orphan.trace_id.hex())


def test_affinity_survives_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "a.db")
    store = SQLiteStore(path)
    store.open()
    pipeline = Pipeline(store)
    bound = make_span("runner", attributes=IDS)
    pending = make_span("agent-early")
    send(pipeline, [bound])
    send(pipeline, [pending])
    pipeline.close()
    store.close()

    store = SQLiteStore(path)
    store.open()
    pipeline = Pipeline(store)
    try:
        send(pipeline, [make_span("agent", trace_id=bound.trace_id)])
        send(pipeline, [make_span("marker", trace_id=pending.trace_id, attributes=IDS)])
        where = {s["name"]: s["rollout_id"] for s in store.spans()}
    finally:
        pipeline.close()
        store.close()
    assert where == {"runner": RID, "agent": RID, "agent-early": RID, "marker": RID}


# -- lifecycle ---------------------------------------------------------------------------


@pytest.mark.agl
def test_rollout_span_status_finishes_the_attempt(pipeline: Pipeline, store: SQLiteStore) -> None:
    ok = make_span("agentlightning.rollout", attributes=IDS)
    send(pipeline, [ok])
    rollout = rollouts(store)[RID]
    assert rollout["status"] == rollout["attempt"]["status"] == "succeeded"
    assert rollout["end_time"] == rollout["attempt"]["end_time"] == ok.end_time_unix_nano / 1e9

    other = {
        "agentlightning.rollout_id": "ro-00000000dead",
        "agentlightning.attempt_id": "at-0000dead",
    }
    failed = make_span("agentlightning.rollout", attributes=other)
    failed.status.code = 2
    send(pipeline, [failed])
    assert rollouts(store)["ro-00000000dead"]["status"] == "failed"
    validate_with_agl("AttemptedRollout", list(store.rollouts()))


def test_attempt_status_attribute_and_new_attempts(pipeline: Pipeline, store: SQLiteStore) -> None:
    send(
        pipeline, [make_span("step", attributes={**IDS, "agentlightning.attempt.status": "failed"})]
    )
    assert rollouts(store)[RID]["status"] == "failed"
    retry = {"agentlightning.rollout_id": RID, "agentlightning.attempt_id": "at-0000bee2"}
    send(pipeline, [make_span("step", attributes=retry)])
    rollout = rollouts(store)[RID]
    assert (
        rollout["attempt"]["sequence_id"] == 2 and rollout["attempt"]["attempt_id"] == "at-0000bee2"
    )
    assert rollout["status"] == "running" and rollout["end_time"] is None
    send(
        pipeline,
        [make_span("done", attributes={**retry, "agentlightning.attempt.status": "succeeded"})],
    )
    assert rollouts(store)[RID]["status"] == "succeeded"
    # A late span of the first attempt does not change what the rollout shows.
    send(
        pipeline, [make_span("late", attributes={**IDS, "agentlightning.attempt.status": "failed"})]
    )
    assert rollouts(store)[RID]["status"] == "succeeded"


def test_finalize_on_root_for_per_trace_rollouts(store: SQLiteStore) -> None:
    pipeline = Pipeline(store, RoutingConfig(finalize_on_root=True))
    try:
        root = make_span("root")
        child = make_span("child", trace_id=root.trace_id, parent_id=root.span_id)
        send(pipeline, [child])
        auto = ids.rollout_id_for_trace(root.trace_id.hex())
        assert rollouts(store)[auto]["status"] == "running"
        root.status.code = 2
        send(pipeline, [root])
        assert rollouts(store)[auto]["status"] == "failed"
    finally:
        pipeline.close()


def test_rewards_are_kept_per_attempt(pipeline: Pipeline, store: SQLiteStore) -> None:
    reward = {
        **IDS,
        "agentlightning.reward.0.name": "primary",
        "agentlightning.reward.0.value": 0.75,
    }
    send(pipeline, [make_span("agentlightning.annotation", attributes=reward)])
    assert store.summaries()[0]["reward"] == 0.75


def test_moves_and_late_bindings_are_counted_in_metrics(
    pipeline: Pipeline, store: SQLiteStore
) -> None:
    from lightning_otlp.receiver.metrics import render

    trace = make_span("x").trace_id
    send(pipeline, [make_span("agent", trace_id=trace), make_span("agent2", trace_id=trace)])
    send(pipeline, [make_span("marker", trace_id=trace, attributes=IDS)])
    page = render(pipeline)
    assert "lightning_otlp_affinity_moved_spans 2" in page.splitlines()
    assert "lightning_otlp_affinity_moved_traces 1" in page.splitlines()
    assert "lightning_otlp_affinity_late_bindings 0" in page.splitlines()


def test_affinity_memory_keeps_the_newest_traces() -> None:
    from lightning_otlp.store.affinity import Changes, TraceAffinity

    affinity = TraceAffinity(window=10.0, max_traces=3)
    changes = Changes()
    changes.bound.extend((bytes([i]) * 16, ("ro-x", "at-y")) for i in range(5))
    changes.autos.extend((bytes([i]) * 16, f"ro-{i}", 100.0 + i) for i in range(5))
    affinity.apply(changes, now=105.0)
    assert list(affinity.bindings) == [bytes([i]) * 16 for i in (2, 3, 4)]
    assert [v[0] for v in affinity.autos.values()] == ["ro-2", "ro-3", "ro-4"]
    assert affinity.holding(105.0)
    affinity.apply(Changes(), now=100.0 + 2 + 10 + 60 + 1)  # past window + retention of ro-2
    assert [v[0] for v in affinity.autos.values()] == ["ro-3", "ro-4"]
    assert not affinity.holding(200.0)


def test_finalize_on_root_leaves_a_bound_trace_alone(store: SQLiteStore) -> None:
    """An unbound root span ends as ERROR, but its trace belongs to the runner's rollout: the
    runner decides that rollout's outcome, not a per-trace rule."""
    pipeline = Pipeline(store, RoutingConfig(finalize_on_root=True))
    try:
        runner = make_span("runner", attributes=IDS)
        send(pipeline, [runner])
        root = make_span("agent-root", trace_id=runner.trace_id)
        root.status.code = 2
        send(pipeline, [root])
    finally:
        pipeline.close()
    assert rollouts(store)[RID]["status"] == "running"


def test_the_configured_window_applies_to_bindings_reloaded_at_start(tmp_path: Path) -> None:
    """The store used to be opened (and its state reloaded) before the window was set."""
    import sqlite3
    import time

    from lightning_otlp.settings import Settings
    from lightning_otlp.wiring import build_pipeline

    path = tmp_path / "window.db"
    store = SQLiteStore(str(path))
    store.open()
    first = Pipeline(store)
    auto = make_span("auto")
    try:
        send(first, [auto])
    finally:
        first.close()
        store.close()
    with sqlite3.connect(path) as conn:  # made 2,000 s ago: past the default window, not 1 h's
        conn.execute("UPDATE rollouts SET created_at = ?", (time.time() - 2000,))
    pipeline = build_pipeline(Settings(store=f"sqlite:///{path}", affinity_window=3600))
    try:
        assert auto.trace_id in pipeline.store.affinity.autos  # type: ignore[attr-defined]
    finally:
        pipeline.close()
        pipeline.store.close()
