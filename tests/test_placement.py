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


def test_a_request_splits_into_one_batch_per_rollout_its_spans_go_to() -> None:
    """Spans of several rollouts: each part holds one rollout's spans (those that follow a
    binding, of this request or one the database holds, with the rollout they follow) and the
    rollouts, bindings, outcomes, rewards and resources they need; nothing lost, nothing twice."""
    one, two, held = (
        (new_rollout_id(), new_attempt_id()),
        (new_rollout_id(), None),
        new_rollout_id(),
    )
    t_one, t_two, t_held, t_alone = (os.urandom(16) for _ in range(4))
    done = {semconv.ATTEMPT_STATUS: "succeeded", semconv.PRIMARY_REWARD_VALUE: 0.5}
    request = make_request(
        [
            make_span(
                "one",
                trace_id=t_one,
                attributes={semconv.ROLLOUT_ID: one[0], semconv.ATTEMPT_ID: one[1], **done},
            ),
            make_span("two", trace_id=t_two, attributes={semconv.ROLLOUT_ID: two[0]}),
            make_span("follows one", trace_id=t_one, attributes=done),
            make_span("follows held", trace_id=t_held),
            make_span("alone", trace_id=t_alone),
            make_span("alone child", trace_id=t_alone, parent_id=os.urandom(8)),
        ]
    )
    whole = route(request, RoutingConfig(finalize_on_root=True))
    alone = rollout_id_for_trace(t_alone.hex())
    parts = placement.by_rollout(whole, {t_held: (held, "at-00000001")})
    assert set(parts) == {one[0], two[0], held, alone}
    spans = {
        rollout_id: sorted(entry[2].name for group in part.groups.values() for entry in group)
        for rollout_id, part in parts.items()
    }
    assert spans == {
        one[0]: ["follows one", "one"],
        two[0]: ["two"],
        held: ["follows held"],
        alone: ["alone", "alone child"],
    }
    assert sum(part.accepted for part in parts.values()) == whole.accepted == 6
    # A span keeps its destination: the part's transaction follows the binding again.
    own_one = (rollout_id_for_trace(t_one.hex()), None)
    assert set(parts[one[0]].groups) == {one, own_one}
    assert set(parts[one[0]].rollouts) == {one[0], own_one[0]}
    assert parts[one[0]].bindings == {t_one: one}
    assert parts[two[0]].bindings == {t_two: two}
    assert not parts[held].bindings and not parts[alone].bindings
    # The outcome and reward of spans that follow a binding go with them.
    assert set(parts[one[0]].outcomes) == {one, own_one}
    assert set(parts[one[0]].rewards) == {one, own_one}
    assert set(parts[alone].root_outcomes) == {(alone, None)}
    assert not any(parts[r].outcomes or parts[r].root_outcomes for r in (two[0], held))
    assert all(set(part.resources) == set(whole.resources) for part in parts.values())


def test_split_parts_write_what_the_whole_request_writes(sql_store: Store) -> None:
    """The parts of a request, written one after the other, store what the request stores."""
    bound = (new_rollout_id(), new_attempt_id())
    trace = os.urandom(16)
    request = make_request(
        [
            make_span(
                "bound",
                trace_id=trace,
                attributes={semconv.ROLLOUT_ID: bound[0], semconv.ATTEMPT_ID: bound[1]},
                start_ns=START,
            ),
            make_span("follower", trace_id=trace, start_ns=START + S),
            *(make_span(f"other {n}", start_ns=START + n * S) for n in range(3)),
        ]
    )
    for part in placement.by_rollout(route(request, RoutingConfig()), {}).values():
        sql_store.write(part)
    assert names(sql_store, bound[0]) == ["bound", "follower"]
    assert len(rollout_ids(sql_store)) == 4


def test_a_new_rollout_s_attempts_are_made_as_its_spans_name_them(sql_store: Store) -> None:
    """A rollout first seen with two attempts, and spans naming it alone: the first attempt
    named is its first, the spans without an attempt go to it, the other is its second."""
    rollout_id, first, second = new_rollout_id(), new_attempt_id(), new_attempt_id()
    trace = os.urandom(16)
    spans = [
        make_span("a", trace_id=trace, start_ns=START + 2 * S, attributes=_ids(rollout_id, first)),
        make_span("b", trace_id=trace, start_ns=START + 3 * S, attributes=_ids(rollout_id)),
        make_span(
            "c", trace_id=os.urandom(16), start_ns=START, attributes=_ids(rollout_id, second)
        ),
    ]
    assert sql_store.write(route(make_request(spans), RoutingConfig())).stored == 3
    with sql_store.transaction() as conn:
        attempts = conn.execute(
            "SELECT attempt_id, sequence_id, status, start_time, next_span_seq FROM attempts"
            " WHERE rollout_id = ? ORDER BY sequence_id",
            (rollout_id,),
        ).fetchall()
        rollout = life.rollout(conn, rollout_id)
    started = START // S
    assert [tuple(row) for row in attempts] == [
        (first, 1, "running", started + 2, (started + 3) * 10**6 + 1),
        (second, 2, "running", started, started * 10**6 + 1),
    ]
    assert (rollout["status"], rollout["start_time"]) == ("running", started)
    by_name = {s["name"]: (s["attempt_id"], s["sequence_id"]) for s in sql_store.spans(rollout_id)}
    assert by_name == {
        "a": (first, (started + 2) * 10**6),
        "b": (first, (started + 3) * 10**6),
        "c": (second, started * 10**6),
    }


def _ids(rollout_id: str, attempt_id: str | None = None) -> dict[str, str]:
    out = {semconv.ROLLOUT_ID: rollout_id}
    if attempt_id is not None:
        out[semconv.ATTEMPT_ID] = attempt_id
    return out
