"""The outbox's pending queue on a real SQLite file: pending, delivered and rejected spans, the
span and byte budget, the age of the oldest pending span, and group commit all or none."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest as PB2ExportTraceServiceRequest,
)

from lightning_otlp.batch import SpanBatch
from lightning_otlp.errors import StoreUnavailable
from lightning_otlp.forward.outbox import Outbox
from lightning_otlp.forward.queue import Row, pending, span_bytes
from lightning_otlp.forward.store import ForwardingStore
from lightning_otlp.receiver.route import RoutingConfig, route

from .payloads import genai_request, make_request, make_span
from .test_affinity import IDS, MS
from .test_forward_logs import Clock

SERVER = "http://127.0.0.1:9"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def outbox(tmp_path: Path, clock: Clock) -> Iterator[Outbox]:
    box = Outbox(
        str(tmp_path / "outbox.db"), SERVER, synchronous="OFF", log_wait=0, clock=clock.time
    )
    box.open()
    yield box
    box.close()


def write(outbox: Outbox, count: int, seed: int) -> None:
    outbox.write(route(genai_request(count, rollouts=2, seed=seed), RoutingConfig()))


def counted(outbox: Outbox) -> tuple[int, int]:
    with outbox.store.locked() as conn:
        return pending(conn)


def test_written_spans_are_pending_and_counted_in_spans_and_bytes(outbox: Outbox) -> None:
    write(outbox, 7, seed=1)
    request = genai_request(5, rollouts=2, seed=2)
    outbox.write(route(request, RoutingConfig()))
    spans, size = outbox.pending()
    assert (spans, size) == counted(outbox)
    assert spans == 12 and size > 12 * 100
    rows, after = outbox.pending_batch(0, 100, 1 << 30)
    assert [type(r) for r in rows] == [Row] * 12
    assert sum(len(r.span) for r in rows) == size and after == rows[-1].rowid
    # A repeat of a request adds nothing.
    outbox.write(route(request, RoutingConfig()))
    assert outbox.pending() == (12, size)


def test_a_batch_is_cut_at_its_byte_limit_but_holds_one_span(outbox: Outbox) -> None:
    write(outbox, 6, seed=1)
    rows, _ = outbox.pending_batch(0, 100, 1)
    assert len(rows) == 1
    first = len(rows[0].span)
    rows, after = outbox.pending_batch(0, 100, first + 1)
    assert len(rows) == 1 and after == rows[0].rowid
    rest, _ = outbox.pending_batch(after, 100, 1 << 30)
    assert len(rest) == 5 and rest[0].rowid > after


def test_the_oldest_pending_span_ages_from_its_request(outbox: Outbox, clock: Clock) -> None:
    write(outbox, 3, seed=1)
    clock.now += 40
    write(outbox, 3, seed=2)
    clock.now += 2
    assert outbox.status()["oldest_pending_age_seconds"] == 42
    rows, _ = outbox.pending_batch(0, 3, 1 << 30)
    outbox.delivered(rows)
    assert outbox.status()["oldest_pending_age_seconds"] == 2
    rest, _ = outbox.pending_batch(0, 100, 1 << 30)
    outbox.delivered(rest)
    assert outbox.status()["oldest_pending_age_seconds"] is None


def test_delivered_spans_leave_and_are_counted(outbox: Outbox, clock: Clock) -> None:
    write(outbox, 10, seed=1)
    rows, _ = outbox.pending_batch(0, 4, 1 << 30)
    outbox.delivered(rows)
    status = outbox.status()
    assert outbox.pending() == counted(outbox) == (6, status["pending_bytes"])
    assert status["forwarded_spans"] == 4 and status["forwarded_requests"] == 1
    assert status["last_forward_time"] == clock.now
    with outbox.store.locked() as conn:
        traces = conn.execute("SELECT COUNT(*) FROM forward_traces").fetchone()[0]
    assert traces > 0  # where the explicit traces went outlives their spans


def test_a_rejected_span_is_kept_aside_and_out_of_the_queue(outbox: Outbox) -> None:
    write(outbox, 3, seed=1)
    rows, _ = outbox.pending_batch(0, 100, 1 << 30)
    outbox.reject(rows[1], "400 bad span")
    status = outbox.status()
    assert outbox.pending()[0] == status["pending_spans"] == 2
    assert status["rejected_spans"] == 1 and status["forwarded_spans"] == 0
    assert "400 bad span" in status["last_error"]
    with outbox.store.locked() as conn:
        kept = conn.execute("SELECT span, error FROM forward_rejected").fetchall()
    assert kept == [(rows[1].span, "400 bad span")]
    left, _ = outbox.pending_batch(0, 100, 1 << 30)
    assert [r.rowid for r in left] == [rows[0].rowid, rows[2].rowid]


def test_the_span_and_byte_budget_refuse_with_a_retry_hint(tmp_path: Path) -> None:
    store = ForwardingStore(
        SERVER, str(tmp_path / "a.db"), max_outbox_spans=10, forward=False, log_wait=0
    )
    store.open()
    try:
        store.write(route(genai_request(6, seed=1), RoutingConfig()))
        with pytest.raises(StoreUnavailable, match="outbox full") as full:
            store.write(route(genai_request(5, seed=2), RoutingConfig()))
        assert full.value.retry_after == 2
        store.write(route(genai_request(4, seed=3), RoutingConfig()))  # exactly full
        assert store.outbox.pending()[0] == 10
    finally:
        store.close()
    store = ForwardingStore(
        SERVER, str(tmp_path / "b.db"), max_outbox_bytes=1000, forward=False, log_wait=0
    )
    store.open()
    try:
        # An empty outbox takes a request of any size; then the bytes are over.
        store.write(route(genai_request(8, seed=1), RoutingConfig()))
        assert store.outbox.pending()[1] > 1000
        with pytest.raises(StoreUnavailable, match="outbox full"):
            store.write(route(genai_request(1, seed=2), RoutingConfig()))
    finally:
        store.close()


def _spans(outbox: Outbox) -> list[tuple[object, ...]]:
    return [
        (s["rollout_id"], s["attempt_id"], s["sequence_id"], s["name"], s["span_id"])
        for s in outbox.store.spans()
    ]


def _affinity_requests() -> list[bytes]:
    """Spans of one trace before and after the span that binds it, between other requests."""
    trace = make_span("x").trace_id
    steps = [
        [make_span("early", trace_id=trace, start_ns=20 * MS)],
        [make_span("agentlightning.rollout.start", trace_id=trace, attributes=IDS, start_ns=MS)],
        [make_span("late", trace_id=trace, start_ns=30 * MS)],
    ]
    out = [make_request(spans).SerializeToString() for spans in steps]
    out.insert(1, genai_request(20, seed=9).SerializeToString())
    return out


def _batches(bodies: list[bytes]) -> list[SpanBatch]:
    return [route(PB2ExportTraceServiceRequest.FromString(b), RoutingConfig()) for b in bodies]


def test_a_group_commits_as_its_requests_one_after_the_other(tmp_path: Path) -> None:
    bodies = _affinity_requests()
    one = ForwardingStore(SERVER, str(tmp_path / "one.db"), forward=False, log_wait=0)
    group = ForwardingStore(SERVER, str(tmp_path / "group.db"), forward=False, log_wait=0)
    one.open()
    group.open()
    try:
        singles = [one.write(b) for b in _batches(bodies)]
        together = group.write_many(_batches(bodies))
        assert together == singles
        assert _spans(group.outbox) == _spans(one.outbox)
        assert group.outbox.pending() == one.outbox.pending() == counted(group.outbox)
        with sqlite3.connect(group.path) as conn:
            marks = conn.execute("SELECT COUNT(*) FROM forward_marks").fetchone()[0]
        assert marks == len(bodies)  # one arrival mark per request, as when written alone
    finally:
        one.close()
        group.close()


def test_a_group_that_may_not_fit_is_refused_whole(tmp_path: Path) -> None:
    """All or none: the pipeline then writes its requests one at a time, each let in or
    refused as it would be alone."""
    store = ForwardingStore(
        SERVER, str(tmp_path / "g.db"), max_outbox_spans=10, forward=False, log_wait=0
    )
    store.open()
    try:
        store.write(route(genai_request(4, seed=1), RoutingConfig()))
        batches = [route(genai_request(4, seed=s), RoutingConfig()) for s in (2, 3)]
        with pytest.raises(StoreUnavailable, match="outbox full"):
            store.write_many(batches)
        assert store.outbox.pending() == counted(store.outbox)
        assert store.outbox.pending()[0] == 4  # nothing of the group was committed
        store.write(batches[0])
        with pytest.raises(StoreUnavailable, match="outbox full"):
            store.write(batches[1])
        assert store.outbox.pending()[0] == 8
    finally:
        store.close()


def test_a_group_that_fails_midway_commits_nothing(tmp_path: Path) -> None:
    """A request that fails inside the group's transaction rolls back the ones before it, and
    the counts and trace affinity in memory go back to what the file holds."""
    store = ForwardingStore(SERVER, str(tmp_path / "m.db"), forward=False, log_wait=0)
    store.open()
    try:
        batches = _batches(_affinity_requests())
        bound_before = dict(store.affinity.bindings)
        with sqlite3.connect(store.path) as other:
            other.execute(  # fails the last request's insert, after the others were written
                "CREATE TRIGGER refuse BEFORE INSERT ON spans WHEN NEW.name = 'late'"
                " BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        with pytest.raises(StoreUnavailable):
            store.write_many(batches)
        assert store.outbox.pending() == counted(store.outbox) == (0, 0)
        assert dict(store.affinity.bindings) == bound_before
        assert list(store.rollouts()) == []
    finally:
        store.close()


def test_span_bytes_bound_what_a_request_adds(outbox: Outbox) -> None:
    batch = route(genai_request(9, seed=4), RoutingConfig())
    carried = span_bytes(batch)
    outbox.write(batch)
    assert outbox.pending()[1] == carried


def test_spans_of_an_unbound_trace_wait_out_the_affinity_window(
    outbox: Outbox, clock: Clock
) -> None:
    """Spans without ids go to their trace's own rollout, which a later binding may still move:
    they stay in the outbox until the window has passed (or their trace is bound)."""
    outbox.write(route(make_request([make_span("agent step")]), RoutingConfig()))
    write(outbox, 2, seed=1)
    affinity = outbox.local.affinity
    ((own, created),) = affinity.autos.values()
    clock.now = created
    rows, _ = outbox.pending_batch(0, 100, 1 << 30)
    assert len(rows) == 2 and own not in {r.rollout_id for r in rows}
    clock.now = created + affinity.window + 0.001
    rows, _ = outbox.pending_batch(0, 100, 1 << 30)
    assert len(rows) == 3 and own in {r.rollout_id for r in rows}
