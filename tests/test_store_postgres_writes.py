"""The PostgreSQL store's own storage paths, on a real server: many rows as one statement,
transactions a concurrent one conflicted with, run again and counted, and spans written one
rollout per transaction (what lets the tables be distributed by rollout)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

from lightning_otlp import semconv
from lightning_otlp.batch import SpanBatch
from lightning_otlp.errors import StoreUnavailable
from lightning_otlp.ids import new_attempt_id, new_rollout_id
from lightning_otlp.receiver.route import RoutingConfig, route
from lightning_otlp.store.affinity import Changes
from lightning_otlp.store.placement import NO_SUCH_ATTEMPT
from lightning_otlp.store.postgres import PostgresStore

from .payloads import make_request, make_span
from .postgres import execute, query
from .rollouts import queue

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[PostgresStore]:
    store = PostgresStore(pg_url)
    store.open()
    yield store
    store.close()


def _insert_bindings(store: PostgresStore, rows: list[tuple[object, ...]]) -> int:
    with store.transaction() as conn:
        cursor = conn.executemany(
            "INSERT INTO trace_bindings (trace_id, rollout_id, attempt_id, created_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            rows,
        )
        return int(cursor.rowcount)


def test_many_rows_skip_duplicates_as_row_by_row_inserts_do(
    pg_store: PostgresStore, pg_url: str
) -> None:
    assert _insert_bindings(pg_store, [(b"\x01" * 16, "ro-a", "at-a", 1.0)]) == 1
    rows = [
        (b"\x01" * 16, "ro-x", "at-x", 2.0),  # stored already: kept as it was
        (b"\x02" * 16, "ro-b", "at-b", 3),  # an int where the column holds floats
        (b"\x02" * 16, "ro-y", "at-y", 4.0),  # twice in one statement: the first stays
        (b"\x03" * 16, "ro-c", "at-c", 5.5),
    ]
    assert _insert_bindings(pg_store, rows) == 2
    stored = query(
        pg_url, "SELECT trace_id, rollout_id, created_at FROM trace_bindings ORDER BY trace_id"
    )
    assert stored == [
        (b"\x01" * 16, "ro-a", 1.0),
        (b"\x02" * 16, "ro-b", 3.0),
        (b"\x03" * 16, "ro-c", 5.5),
    ]


def test_rows_keep_their_order_and_mixed_values_still_go_in(
    pg_store: PostgresStore, pg_url: str
) -> None:
    logs = [(bytes([n]) * 16, bytes([n]) * 8, bytes([n]), float(n), b"{}") for n in range(5)]
    with pg_store.transaction() as conn:
        conn.executemany(
            "INSERT INTO span_logs (trace_id, span_id, digest, time, record)"
            " VALUES (?, ?, ?, ?, ?)",
            logs,
        )
    ordered = query(pg_url, "SELECT digest FROM span_logs ORDER BY rowid")
    assert [row[0] for row in ordered] == [bytes([n]) for n in range(5)]
    # Values of two types in one text column: not one array, so row by row, as before.
    rows: list[tuple[object, ...]] = [
        (b"\x09" * 16, 7, "at-1", 1.0),
        (b"\x0a" * 16, "ro-z", "at-2", 2.0),
    ]
    assert _insert_bindings(pg_store, rows) == 2
    assert query(pg_url, "SELECT rollout_id FROM trace_bindings ORDER BY trace_id") == [
        ("7",),
        ("ro-z",),
    ]


def test_a_conflicting_transaction_runs_again_and_is_counted(
    pg_store: PostgresStore, pg_url: str
) -> None:
    """Two transactions each read what the other writes (write skew): PostgreSQL aborts one,
    the store runs it again whole, and the counter says so."""
    both_read = threading.Barrier(2, timeout=30)
    errors: list[BaseException] = []

    def write(work: str) -> None:
        tries = 0

        def once() -> None:
            nonlocal tries
            tries += 1
            with pg_store.transaction() as conn:
                conn.execute("SELECT COUNT(*) FROM fleet_work").fetchone()
                if tries == 1:
                    both_read.wait()
                conn.execute("INSERT INTO fleet_work (work, done_at) VALUES (?, 0)", (work,))

        try:
            pg_store.retrying(once)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(name,)) for name in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert query(pg_url, "SELECT work FROM fleet_work ORDER BY work") == [("one",), ("two",)]
    counted = {m.name: m.value for m in pg_store.metrics()}
    assert counted["lightning_otlp_store_conflicts"] >= 1


# Every row written to a table about a rollout notes the transaction and the rollout (a real
# trigger in the real server): what each transaction touched, read back afterwards.
_NOTE_TOUCHES = """
CREATE TABLE touched (xid BIGINT NOT NULL, rollout_id TEXT NOT NULL);
CREATE FUNCTION note_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN INSERT INTO touched VALUES (txid_current(), OLD.rollout_id); END IF;
    IF TG_OP <> 'DELETE' THEN INSERT INTO touched VALUES (txid_current(), NEW.rollout_id); END IF;
    RETURN NULL;
END $$;
"""
_ROLLOUT_TABLES = ("rollouts", "attempts", "spans", "span_issued", "trace_bindings", "span_views")
# Spans of the rollouts named in ``fail_for`` are refused by the server.
_FAIL_FOR = """
CREATE TABLE fail_for (rollout_id TEXT NOT NULL);
CREATE FUNCTION fail_some() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM fail_for WHERE rollout_id = NEW.rollout_id) THEN
        RAISE EXCEPTION 'spans of %% refused', NEW.rollout_id;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER fail_some BEFORE INSERT ON spans FOR EACH ROW EXECUTE FUNCTION fail_some();
"""


def _request(rollouts: list[tuple[str, str]], per_rollout: int = 3) -> SpanBatch:
    """One request: ``per_rollout`` spans of each rollout, one trace each, interleaved."""
    traces = [os.urandom(16) for _ in rollouts]
    spans = [
        make_span(
            f"step {n}",
            trace_id=trace,
            attributes={semconv.ROLLOUT_ID: rid, semconv.ATTEMPT_ID: aid},
        )
        for n in range(per_rollout)
        for trace, (rid, aid) in zip(traces, rollouts, strict=True)
    ]
    return route(make_request(spans), RoutingConfig())


def _ids(count: int) -> list[tuple[str, str]]:
    return [(new_rollout_id(), new_attempt_id()) for _ in range(count)]


def test_each_rollout_commits_in_a_transaction_of_its_own(
    pg_store: PostgresStore, pg_url: str
) -> None:
    execute(pg_url, _NOTE_TOUCHES)
    for table in _ROLLOUT_TABLES:
        execute(
            pg_url,
            f"CREATE TRIGGER note_touch AFTER INSERT OR UPDATE OR DELETE ON {table}"
            " FOR EACH ROW EXECUTE FUNCTION note_touch()",
        )
    five = _ids(5)
    # One request naming five rollouts, then a group of three requests sharing rollouts, and
    # spans without ids that follow their trace's binding.
    pg_store.write(_request(five))
    trace = os.urandom(16)
    bound = make_span("bound", trace_id=trace, attributes={semconv.ROLLOUT_ID: five[0][0]})
    group = [
        _request(five[:2]),
        _request(five[1:3]),
        route(make_request([bound, make_span("follower", trace_id=trace)]), RoutingConfig()),
    ]
    results = pg_store.write_many(group)
    assert [r.stored for r in results] == [6, 6, 2]
    per_transaction = query(
        pg_url, "SELECT xid, COUNT(DISTINCT rollout_id) FROM touched GROUP BY xid"
    )
    assert per_transaction and all(count == 1 for _, count in per_transaction)
    # The first request: five transactions; the group: one for each of the three rollouts.
    assert len(per_transaction) == 5 + 3
    touched = query(pg_url, "SELECT COUNT(DISTINCT rollout_id) FROM touched")
    assert touched == [(5,)]
    follower = query(pg_url, "SELECT rollout_id FROM spans WHERE name = 'follower'")
    assert follower == [(five[0][0],)]


def test_a_rollout_that_fails_fails_its_requests_and_the_retry_stores_each_span_once(
    pg_store: PostgresStore, pg_url: str
) -> None:
    execute(pg_url, _FAIL_FOR)
    ids = _ids(4)
    execute(pg_url, "INSERT INTO fail_for VALUES (%s)", (ids[1][0],))
    first, second = _request(ids[:3]), _request(ids[2:])
    with pytest.raises(StoreUnavailable, match="refused"):
        pg_store.write_many([first, second])
    # The other rollouts committed, the refused one did not.
    stored = dict(query(pg_url, "SELECT rollout_id, COUNT(*) FROM spans GROUP BY rollout_id"))
    assert stored == {ids[0][0]: 3, ids[2][0]: 6, ids[3][0]: 3}
    execute(pg_url, "DELETE FROM fail_for")
    # The pipeline writes each request of a failed group again, alone.
    assert pg_store.write(first).stored == 3  # only the spans that had failed
    assert pg_store.write(second).stored == 0
    assert query(pg_url, "SELECT COUNT(*), COUNT(DISTINCT (trace_id, span_id)) FROM spans") == [
        (15, 15)
    ]
    twice = query(
        pg_url,
        "SELECT rollout_id, attempt_id, sequence_id FROM spans"
        " GROUP BY rollout_id, attempt_id, sequence_id HAVING COUNT(*) > 1",
    )
    assert twice == []


def test_refused_spans_are_counted_for_their_own_request(pg_store: PostgresStore) -> None:
    with pg_store.transaction() as conn:
        managed = queue(conn)  # the API's: its attempts start through the API
    missing = (managed, new_attempt_id())
    others = _ids(2)
    first, second = _request([missing, *others]), _request([missing], per_rollout=2)
    results = pg_store.write_many([first, second])
    assert [r.stored for r in results] == [6, 0]
    assert first.refused == {NO_SUCH_ATTEMPT: 3}
    assert second.refused == {NO_SUCH_ATTEMPT: 2}


def test_a_closed_store_answers_a_write_retryable(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    store.open()
    store.close()
    with pytest.raises(StoreUnavailable, match="not open"):
        store.write(_request(_ids(3)))


def test_rollouts_created_at_once_do_not_conflict(pg_store: PostgresStore, pg_url: str) -> None:
    """Two requests each starting a new rollout (their traces bound by explicit ids), written
    in two open transactions at once: neither reads a rollout or attempt key the other
    inserts, so both commit, with nothing to run again."""
    pg_store.write(_request(_ids(3)))  # rollouts already there, beside the new ones
    before = {m.name: m.value for m in pg_store.metrics()}
    first, second = _request(_ids(1)), _request(_ids(1))
    with pg_store.transaction() as one, pg_store.transaction() as two:
        assert pg_store.write_in(one, first, Changes()) == 3
        assert pg_store.write_in(two, second, Changes()) == 3
        marked = query(
            pg_url,
            "SELECT DISTINCT relation::regclass::text FROM pg_locks WHERE mode = 'SIReadLock'",
        )
    assert {name for (name,) in marked}.isdisjoint({"rollouts_pkey", "attempts_pkey"})
    assert query(pg_url, "SELECT COUNT(*) FROM spans") == [(3 * 3 + 2 * 3,)]
    after = {m.name: m.value for m in pg_store.metrics()}
    conflicts = "lightning_otlp_store_conflicts"
    assert after[conflicts] == before[conflicts]
