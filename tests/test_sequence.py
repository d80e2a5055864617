"""Sequence ids within an attempt (``store.sequence``) on every backend: the counter, start
times, explicit ids kept, and ids already stored or issued never given again."""

from __future__ import annotations

from typing import Any

from lightning_otlp import semconv
from lightning_otlp.batch import RoutedSpan, SpanRow
from lightning_otlp.receiver.route import RoutingConfig, route
from lightning_otlp.store.api_store import SQLLightningStore
from lightning_otlp.store.dialect import Conn
from lightning_otlp.store.lifecycle import raise_counter
from lightning_otlp.store.postgres import PostgresStore
from lightning_otlp.store.sequence import (
    LOOKUP_ROWS,
    attempt_counter,
    free_sequence_ids,
    sequence_ids,
)
from lightning_otlp.store.sqlite import SQLiteStore

from .payloads import make_request, make_span
from .rollouts import started
from .support import Clock

_ROW = SpanRow(b"\x01" * 16, b"\x02" * 8, None, "s", None, None, "UNSET", b"", "r")


def entry(start: float, explicit: int | None = None) -> RoutedSpan:
    return (start, explicit, _ROW)


def begun(store: SQLiteStore | PostgresStore) -> dict[str, Any]:
    """A rollout's running attempt, committed."""
    with store.transaction() as conn:
        return started(conn)


def store_spans(store: SQLiteStore | PostgresStore, attempt: dict[str, Any], *spans: Any) -> None:
    """One request of spans through the OTLP write path."""
    ids = {semconv.ROLLOUT_ID: attempt["rollout_id"], semconv.ATTEMPT_ID: attempt["attempt_id"]}
    store.write(route(make_request(list(spans), resource=ids), RoutingConfig()))


def stored_ids(store: SQLiteStore | PostgresStore, rollout_id: str) -> dict[str, int]:
    return {s["name"]: s["sequence_id"] for s in store.spans(rollout_id, raw=True)}


def test_the_counter_numbers_in_arrival_order_and_keeps_explicit_ids(conn: Conn) -> None:
    attempt = started(conn)
    entries = [entry(5.0), entry(1.0, 7), entry(3.0), entry(0.0)]
    out = sequence_ids("counter", conn, attempt["rollout_id"], attempt["attempt_id"], entries, 4)
    assert out == [4, 7, 5, 6]


def test_start_times_number_in_microseconds_past_explicit_ids(conn: Conn) -> None:
    attempt = started(conn)
    entries = [entry(2.0), entry(1.0), entry(0.0), entry(1.5, 1_000_000)]
    out = sequence_ids("start-time", conn, attempt["rollout_id"], attempt["attempt_id"], entries, 4)
    # 1.0 s wants 1_000_000, which the explicit id has; a span without a start time comes last
    assert out == [2_000_000, 1_000_001, 2_000_001, 1_000_000]


def test_spans_of_later_requests_step_past_stored_ids(
    sql_store: SQLiteStore | PostgresStore,
) -> None:
    attempt = begun(sql_store)
    start_ns = 1_700_000_000_000_000_000
    store_spans(sql_store, attempt, make_span("first", start_ns=start_ns))
    store_spans(sql_store, attempt, make_span("same start", start_ns=start_ns))
    explicit = {semconv.SPAN_SEQUENCE_ID: 1_700_000_000_000_002}
    store_spans(sql_store, attempt, make_span("explicit", attributes=explicit))
    store_spans(sql_store, attempt, make_span("again", start_ns=start_ns))
    assert stored_ids(sql_store, attempt["rollout_id"]) == {
        "first": 1_700_000_000_000_000,
        "same start": 1_700_000_000_000_001,
        "explicit": 1_700_000_000_000_002,
        "again": 1_700_000_000_000_003,
    }


def test_free_ids_step_past_a_run_of_taken_ones(sql_store: SQLiteStore | PostgresStore) -> None:
    attempt = begun(sql_store)
    rollout_id, attempt_id = attempt["rollout_id"], attempt["attempt_id"]
    taken = [make_span(f"s{i}", attributes={semconv.SPAN_SEQUENCE_ID: i}) for i in range(5, 40)]
    store_spans(sql_store, attempt, *taken)
    with sql_store.transaction() as conn:
        check_free_ids(conn, rollout_id, attempt_id)


def check_free_ids(conn: Conn, rollout_id: str, attempt_id: str) -> None:
    assert free_sequence_ids(conn, rollout_id, attempt_id, [5]) == [40]
    assert free_sequence_ids(conn, rollout_id, attempt_id, [1, 1, 3, 41], {42}) == [1, 2, 3, 41]
    assert free_sequence_ids(conn, rollout_id, attempt_id, [4, 4]) == [4, 40]
    assert free_sequence_ids(conn, rollout_id, attempt_id, []) == []
    # Ids from the counter up are free without a look: below it, they are looked up.
    assert free_sequence_ids(conn, rollout_id, attempt_id, [5, 45, 45], free_from=40) == [
        40,
        45,
        46,
    ]
    assert free_sequence_ids(conn, rollout_id, attempt_id, [12], free_from=10) == [12]


def test_an_id_spans_next_issued_is_never_given_to_an_otlp_span(
    sql_store: SQLiteStore | PostgresStore,
) -> None:
    clock = Clock(1_700_000_000.0)
    api = SQLLightningStore(sql_store, clock=clock)
    attempt = api.start_rollout("task", None, None, None, None, None)["attempt"]
    issued = api.next_span_sequence_id(attempt["rollout_id"], attempt["attempt_id"])
    assert issued == 1_700_000_000_000_000  # now, in microseconds
    store_spans(sql_store, attempt, make_span("otlp", start_ns=1_700_000_000 * 10**9))
    assert stored_ids(sql_store, attempt["rollout_id"]) == {"otlp": issued + 1}


def test_spans_next_looks_up_what_is_taken_at_now_with_its_counter(
    sql_store: SQLiteStore | PostgresStore,
) -> None:
    """``spans/next`` issues now if free, else the next free id, and the counter when it is
    ahead of now. SQLite reads its counter and the ids taken at now together; where processes
    share the store, every write raises the counter past the ids it stores or issues, so the
    ids from the counter up are free and none is looked up."""
    clock = Clock(1_700_000_000.0)
    api = SQLLightningStore(sql_store, clock=clock)
    attempt = api.start_rollout("task", None, None, None, None, None)["attempt"]
    ids = attempt["rollout_id"], attempt["attempt_id"]
    now = 1_700_000_000_000_000
    assert api.next_span_sequence_id(*ids) == now
    assert api.next_span_sequence_id(*ids) == now + 1  # the same microsecond: the counter
    clock.advance(10e-6)
    assert api.next_span_sequence_id(*ids) == now + 10
    clock.advance(10e-6)
    with sql_store.transaction() as conn:  # taken at now and just after, the counter behind
        conn.executemany(
            "INSERT INTO span_issued (rollout_id, attempt_id, sequence_id) VALUES (?, ?, ?)",
            [(*ids, now + 20), (*ids, now + 21), (*ids, now + 22)],
        )
        if conn.dialect.shared:  # as the store's own writes of these ids would leave it
            raise_counter(conn, *ids, now + 23)
    assert api.next_span_sequence_id(*ids) == now + 23
    with sql_store.transaction() as conn:
        conn.execute(
            "INSERT INTO span_issued (rollout_id, attempt_id, sequence_id) VALUES (?, ?, ?)",
            (*ids, now + 1000),
        )
        raise_counter(conn, *ids, now + 1000)  # ahead of now, its own id taken
        if conn.dialect.shared:
            raise_counter(conn, *ids, now + 1001)
    assert api.next_span_sequence_id(*ids) == now + 1001


def test_a_counter_out_of_bounds_is_rebuilt_from_the_spans(
    sql_store: SQLiteStore | PostgresStore,
) -> None:
    attempt = begun(sql_store)
    rollout_id, attempt_id = attempt["rollout_id"], attempt["attempt_id"]
    with sql_store.transaction() as conn:
        assert attempt_counter(conn, rollout_id, attempt_id, 0) == 1  # no spans yet
    store_spans(sql_store, attempt, make_span("s", attributes={semconv.SPAN_SEQUENCE_ID: 41}))
    with sql_store.transaction() as conn:
        assert attempt_counter(conn, rollout_id, attempt_id, 7) == 7  # in bounds: kept
        assert attempt_counter(conn, rollout_id, attempt_id, 2**62 + 1) == 42
        assert attempt_counter(conn, rollout_id, attempt_id, 0) == 42


def issued(conn: Conn, rollout_id: str, attempt_id: str, ids: Any) -> None:
    conn.executemany(
        "INSERT INTO span_issued (rollout_id, attempt_id, sequence_id) VALUES (?, ?, ?)",
        [(rollout_id, attempt_id, i) for i in ids],
    )


def test_stepping_past_taken_ids_reads_a_bounded_number_of_them(
    sql_store: SQLiteStore | PostgresStore,
) -> None:
    """A gap within ``LOOKUP_ROWS`` taken ids is found; past that many, the id comes from above
    every taken one (where the request's own ids are still stepped past), so spans that all
    start at one instant never read the whole attempt's ids again."""
    attempt = begun(sql_store)
    ids = attempt["rollout_id"], attempt["attempt_id"]
    near, far = 100 + LOOKUP_ROWS // 2, 100 + 3 * LOOKUP_ROWS
    with sql_store.transaction() as conn:
        issued(conn, *ids, (i for i in range(100, 100 + 4 * LOOKUP_ROWS) if i not in (near, far)))
        highest = 99 + 4 * LOOKUP_ROWS
        assert free_sequence_ids(conn, *ids, [100]) == [near]
        assert free_sequence_ids(conn, *ids, [100, 100]) == [near, highest + 1]
        assert free_sequence_ids(conn, *ids, [near + 1]) == [highest + 1]  # far is too far
        assert free_sequence_ids(conn, *ids, [far]) == [far]  # looked up where it is
        assert free_sequence_ids(conn, *ids, [near + 1], {highest + 1}) == [highest + 2]
        assert free_sequence_ids(conn, *ids, [near + 1], free_from=highest + 5) == [highest + 5]


def test_requests_whose_spans_all_start_at_one_instant_get_ids_of_their_own(
    sql_store: SQLiteStore | PostgresStore,
) -> None:
    attempt = begun(sql_store)
    start_ns = 1_700_000_000_000_000_000
    for n in range(6):
        spans = [make_span(f"r{n}s{i}", start_ns=start_ns) for i in range(LOOKUP_ROWS // 2)]
        store_spans(sql_store, attempt, *spans)
    got = stored_ids(sql_store, attempt["rollout_id"])
    assert len(set(got.values())) == len(got) == 3 * LOOKUP_ROWS
    assert min(got.values()) == start_ns // 1000
    for n in range(5):  # a later request's spans after an earlier one's
        assert got[f"r{n}s{LOOKUP_ROWS // 2 - 1}"] < got[f"r{n + 1}s0"]
