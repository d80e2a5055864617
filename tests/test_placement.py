"""Where spans go (``store.placement``) on every backend: trace bindings followed, per-trace
rollouts moved inside the affinity window (late bindings counted), API-managed rollouts
refusing attempts they never started, and outcomes spans carry."""

from __future__ import annotations

import os
from typing import Any

from lightning_otlp import semconv
from lightning_otlp.batch import SpanBatch
from lightning_otlp.ids import attempt_id_for, new_attempt_id, new_rollout_id, rollout_id_for_trace
from lightning_otlp.receiver.route import RoutingConfig, route
from lightning_otlp.store import lifecycle as life
from lightning_otlp.store import placement
from lightning_otlp.store.affinity import Changes, TraceAffinity
from lightning_otlp.store.dialect import Conn
from lightning_otlp.store.postgres import PostgresStore
from lightning_otlp.store.sqlite import SQLiteStore

from .payloads import make_request, make_span
from .rollouts import T0, dequeue, queue

Store = SQLiteStore | PostgresStore
S = 10**9  # nanoseconds in a second
START = 1_700_000_000 * S


def batch(
    trace_id: bytes, name: str, ids: tuple[str, str | None] | None = None, **span: Any
) -> SpanBatch:
    """One span of ``trace_id``, routed; with ``ids``, the rollout (and attempt) it names."""
    resource: dict[str, str] = {}
    if ids is not None:
        resource[semconv.ROLLOUT_ID] = ids[0]
        if ids[1] is not None:
            resource[semconv.ATTEMPT_ID] = ids[1]
    request = make_request([make_span(name, trace_id=trace_id, **span)], resource=resource)
    return route(request, RoutingConfig())


def names(store: Store, rollout_id: str) -> list[str]:
    return [s["name"] for s in store.spans(rollout_id, raw=True)]


def rollout_ids(store: Store) -> set[str]:
    return {r["rollout_id"] for r in store.rollouts()}


def test_spans_without_ids_follow_their_trace_binding(sql_store: Store) -> None:
    trace = os.urandom(16)
    bound = (new_rollout_id(), new_attempt_id())
    sql_store.write(batch(trace, "bound", bound, start_ns=START))
    sql_store.write(batch(trace, "follower", start_ns=START + S))
    sql_store.write(batch(os.urandom(16), "stranger", start_ns=START + S))
    assert names(sql_store, bound[0]) == ["bound", "follower"]
    # the trace made no rollout of its own; another trace did
    assert len(rollout_ids(sql_store)) == 2
    assert rollout_id_for_trace(trace.hex()) not in rollout_ids(sql_store)


def test_a_binding_empties_its_trace_per_trace_rollout(sql_store: Store) -> None:
    trace = os.urandom(16)
    own = rollout_id_for_trace(trace.hex())
    sql_store.write(batch(trace, "early", start_ns=START))
    assert names(sql_store, own) == ["early"]
    bound = (new_rollout_id(), new_attempt_id())
    sql_store.write(batch(trace, "bound", bound, start_ns=START + S))
    assert names(sql_store, bound[0]) == ["early", "bound"]
    assert rollout_ids(sql_store) == {bound[0]}  # the emptied per-trace rollout is gone
    counters = sql_store.affinity.counters
    assert (counters.moved_traces, counters.moved_spans) == (1, 1)


def test_spans_move_only_inside_the_affinity_window(sql_store: Store, conn: Conn) -> None:
    trace = os.urandom(16)
    own = rollout_id_for_trace(trace.hex())
    made = Changes()
    sql_store.write_in(conn, batch(trace, "early", start_ns=START), made)
    assert [(t, r) for t, r, _ in made.autos] == [(trace, own)]
    affinity = TraceAffinity(window=60)
    affinity.autos[trace] = (own, T0)  # made at T0
    binding = batch(trace, "bound", (new_rollout_id(), new_attempt_id()))
    [dest] = binding.groups

    inside = Changes()
    moves = placement.claim_moves(conn, affinity, binding, binding.groups, T0 + 60, inside)
    assert [(m.start, m.sequence_id) for m in moves[dest]] == [(START / S, None)]
    assert (inside.moved, inside.moved_spans, inside.late) == ([trace], 1, 0)

    late = Changes()
    assert placement.claim_moves(conn, affinity, binding, binding.groups, T0 + 61, late) == {}
    assert (late.moved, late.late) == ([], 1)
    affinity.count(late)
    assert affinity.counters.late_bindings == 1

    affinity.bindings[trace] = dest  # bound before: its per-trace rollout was dealt with then
    again = Changes()
    assert placement.claim_moves(conn, affinity, binding, binding.groups, T0 + 1, again) == {}


def test_a_managed_rollout_refuses_spans_for_attempts_it_never_started(sql_store: Store) -> None:
    with sql_store.transaction() as conn:
        rollout_id = queue(conn)  # made by the API: its attempts start through the API
    trace = os.urandom(16)
    for ids in ((rollout_id, "at-deadbeef"), (rollout_id, None)):
        refused = batch(trace, "early", ids)
        assert sql_store.write(refused).stored == 0
        assert refused.refused == {placement.NO_SUCH_ATTEMPT: 1}
    with sql_store.transaction() as conn:
        assert life.rollout(conn, rollout_id)["status"] == "queuing"  # not taken off the queue
        attempt = dequeue(conn)
    kept = batch(trace, "kept", (rollout_id, attempt["attempt_id"]))
    assert sql_store.write(kept).stored == 1 and kept.refused == {}
    assert names(sql_store, rollout_id) == ["kept"]
    with sql_store.transaction() as conn:
        assert life.rollout(conn, rollout_id)["status"] == "running"


def test_a_rollout_id_alone_goes_to_the_latest_attempt(sql_store: Store) -> None:
    rollout_id = new_rollout_id()
    sql_store.write(batch(os.urandom(16), "first", (rollout_id, None)))
    with sql_store.transaction() as conn:
        made = life.latest_attempt(conn, rollout_id)
        assert made is not None and made["attempt_id"] == attempt_id_for(rollout_id, 1)
        second = life.new_attempt(conn, rollout_id, None, T0)
    sql_store.write(batch(os.urandom(16), "second", (rollout_id, None)))
    by_attempt = {s["name"]: s["attempt_id"] for s in sql_store.spans(rollout_id, raw=True)}
    assert by_attempt == {"first": made["attempt_id"], "second": second["attempt_id"]}


def test_outcomes_spans_carry_go_through_the_lifecycle_and_finished_stays_finished(
    sql_store: Store,
) -> None:
    with sql_store.transaction() as conn:
        queue(conn)
        attempt = dequeue(conn, worker_id="w")
    ids = (attempt["rollout_id"], attempt["attempt_id"])
    status = {semconv.ATTEMPT_STATUS: "succeeded"}
    end = START + 3 * S
    done = batch(os.urandom(16), "done", ids, attributes=status, start_ns=end - S, duration_ns=S)
    sql_store.write(done)
    late = {semconv.ATTEMPT_STATUS: "failed"}
    sql_store.write(batch(os.urandom(16), "late", ids, attributes=late, start_ns=end))
    assert names(sql_store, ids[0]) == ["done", "late"]  # the late span is stored all the same
    with sql_store.transaction() as conn:
        rollout = life.rollout(conn, ids[0])
        worker = life.worker(conn, "w")
    assert (rollout["status"], rollout["end_time"]) == ("succeeded", end / S)
    assert (rollout["attempt"]["status"], rollout["attempt"]["end_time"]) == ("succeeded", end / S)
    assert worker is not None and worker["status"] == "idle"
    assert sql_store.affinity.counters.ignored_outcomes == 1
