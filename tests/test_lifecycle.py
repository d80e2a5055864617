"""The rollout and attempt lifecycle (``store.lifecycle``) on every backend, in one transaction
at fixed times: the outcome rule, retries, the queue, workers and the watchdog."""

from __future__ import annotations

from typing import Any

import pytest

from lightning_otlp.errors import StoreUnavailable
from lightning_otlp.store import lifecycle as life
from lightning_otlp.store.api_store import SQLLightningStore
from lightning_otlp.store.dialect import Conn
from lightning_otlp.store.postgres import PostgresStore
from lightning_otlp.store.sqlite import SQLiteStore

from .rollouts import RETRY, T0, dequeue, queue, started, watch
from .support import Clock


def attempt_status(conn: Conn, rollout_id: str, attempt_id: str) -> str:
    found = life.attempt(conn, rollout_id, attempt_id)
    assert found is not None
    return str(found["status"])


# -- one outcome rule ---------------------------------------------------------------------------

FINISHED_ROLLOUT = ("failed", "succeeded", "cancelled")


@pytest.mark.parametrize(
    ("status", "config", "rollout_status"),
    [
        ("preparing", None, "preparing"),
        ("running", None, "running"),
        ("succeeded", None, "succeeded"),
        ("failed", None, "failed"),
        ("timeout", None, "failed"),
        ("unresponsive", None, "failed"),
        ("running", RETRY, "running"),
        ("succeeded", RETRY, "succeeded"),
        ("failed", RETRY, "requeuing"),
        ("timeout", RETRY, "requeuing"),
        ("unresponsive", RETRY, "requeuing"),
    ],
)
def test_the_rollout_follows_its_latest_attempt(
    conn: Conn, status: str, config: dict[str, Any] | None, rollout_status: str
) -> None:
    attempt = started(conn, config=config)
    rollout_id = attempt["rollout_id"]
    updated = life.update_attempt(
        conn, rollout_id, attempt["attempt_id"], {"status": status}, T0 + 5
    )
    rollout = life.rollout(conn, rollout_id)
    assert rollout["status"] == rollout_status
    assert rollout["end_time"] == (T0 + 5 if rollout_status in FINISHED_ROLLOUT else None)
    assert rollout["attempt"] == updated
    assert updated["status"] == status
    # upstream ends an attempt's time only when it succeeds or fails, not on a watchdog status
    assert updated["end_time"] == (T0 + 5 if status in ("failed", "succeeded") else None)


def test_retries_stop_at_max_attempts_and_only_on_listed_statuses(conn: Conn) -> None:
    config = {"max_attempts": 2, "retry_condition": ["failed"]}
    first = started(conn, config=config)
    rollout_id = first["rollout_id"]
    life.update_attempt(conn, rollout_id, first["attempt_id"], {"status": "failed"}, T0 + 1)
    assert life.rollout(conn, rollout_id)["status"] == "requeuing"
    second = dequeue(conn, now=T0 + 2)
    assert (second["rollout_id"], second["sequence_id"]) == (rollout_id, 2)
    assert life.rollout(conn, rollout_id)["status"] == "preparing"
    life.update_attempt(conn, rollout_id, "latest", {"status": "failed"}, T0 + 3)
    assert life.rollout(conn, rollout_id)["status"] == "failed"  # two attempts: no third
    # a status the rollout's config does not list is never retried
    other = started(conn, config=config, now=T0 + 4)
    life.update_attempt(conn, other["rollout_id"], "latest", {"status": "timeout"}, T0 + 5)
    assert life.rollout(conn, other["rollout_id"])["status"] == "failed"


def test_an_earlier_attempt_moves_no_rollout(conn: Conn) -> None:
    first = started(conn, config=RETRY)
    rollout_id = first["rollout_id"]
    life.update_attempt(conn, rollout_id, first["attempt_id"], {"status": "failed"}, T0 + 1)
    dequeue(conn, now=T0 + 2)
    life.update_attempt(conn, rollout_id, first["attempt_id"], {"status": "succeeded"}, T0 + 3)
    rollout = life.rollout(conn, rollout_id)
    assert rollout["status"] == "preparing" and rollout["attempt"]["sequence_id"] == 2
    assert attempt_status(conn, rollout_id, first["attempt_id"]) == "succeeded"


def test_unknown_rollouts_attempts_and_statuses_are_refused(conn: Conn) -> None:
    attempt = started(conn)
    rollout_id = attempt["rollout_id"]
    with pytest.raises(life.NotFound, match="Rollout ro-missing not found"):
        life.update_attempt(conn, "ro-missing", "latest", {"status": "failed"}, T0)
    with pytest.raises(life.NotFound, match="Attempt at-missing not found"):
        life.update_attempt(conn, rollout_id, "at-missing", {"status": "failed"}, T0)
    queued = queue(conn)
    with pytest.raises(life.NotFound, match="No attempts found"):
        life.update_attempt(conn, queued, "latest", {"status": "failed"}, T0)
    with pytest.raises(ValueError, match="Invalid attempt status: done"):
        life.update_attempt(conn, rollout_id, "latest", {"status": "done"}, T0)


def test_finished_stays_finished(conn: Conn) -> None:
    attempt = started(conn)
    rollout_id, attempt_id = attempt["rollout_id"], attempt["attempt_id"]
    assert not life.finished(conn, rollout_id, attempt_id)
    life.update_attempt(conn, rollout_id, attempt_id, {"status": "succeeded"}, T0 + 1)
    assert life.finished(conn, rollout_id, attempt_id)
    # a rollout cancelled while its attempt runs: the attempt is finished with it
    other = started(conn)
    assert not life.finished(conn, other["rollout_id"], other["attempt_id"])
    life.set_rollout_status(conn, other["rollout_id"], "cancelled", T0 + 2)
    assert life.finished(conn, other["rollout_id"], other["attempt_id"])
    assert life.rollout(conn, other["rollout_id"])["end_time"] == T0 + 2


# -- outcomes spans carry -----------------------------------------------------------------------


def test_an_outcome_a_span_carries_ends_at_the_span_end(conn: Conn) -> None:
    attempt = started(conn, worker_id="w")
    rollout_id, attempt_id = attempt["rollout_id"], attempt["attempt_id"]
    life.span_outcome(conn, rollout_id, attempt_id, "succeeded", T0 + 3, T0 + 9)
    rollout = life.rollout(conn, rollout_id)
    assert (rollout["status"], rollout["end_time"]) == ("succeeded", T0 + 3)
    assert (rollout["attempt"]["status"], rollout["attempt"]["end_time"]) == ("succeeded", T0 + 3)
    worker = life.worker(conn, "w")
    assert worker is not None and worker["status"] == "idle"


def test_a_failure_a_span_carries_is_retried_as_the_config_says(conn: Conn) -> None:
    attempt = started(conn, config=RETRY, worker_id="w")
    rollout_id, attempt_id = attempt["rollout_id"], attempt["attempt_id"]
    life.span_outcome(conn, rollout_id, attempt_id, "failed", T0 + 3, T0 + 9)
    rollout = life.rollout(conn, rollout_id)
    assert (rollout["status"], rollout["end_time"]) == ("requeuing", None)
    assert (rollout["attempt"]["status"], rollout["attempt"]["end_time"]) == ("failed", T0 + 3)
    assert life.take_from_queue(conn) == rollout_id  # back in the queue for its retry


def test_a_span_is_a_heartbeat(conn: Conn) -> None:
    attempt = started(conn)
    rollout_id, attempt_id = attempt["rollout_id"], attempt["attempt_id"]
    life.heartbeat(conn, rollout_id, attempt_id, T0 + 4)
    rollout = life.rollout(conn, rollout_id)
    assert rollout["status"] == "running"
    assert rollout["attempt"]["status"] == "running"
    assert rollout["attempt"]["last_heartbeat_time"] == T0 + 4


# -- the queue ----------------------------------------------------------------------------------


def test_the_queue_hands_out_rollouts_in_order_once(conn: Conn) -> None:
    assert life.take_from_queue(conn) is None
    ids = [queue(conn, now=T0 + i) for i in range(3)]
    assert [life.take_from_queue(conn) for _ in range(4)] == [*ids, None]
    # taking is not dequeuing: the rollouts stay queuing until an attempt starts
    assert [life.rollout(conn, i)["status"] for i in ids] == ["queuing"] * 3


def test_the_queue_skips_rollouts_no_longer_queuing(conn: Conn) -> None:
    first, second, third = (queue(conn) for _ in range(3))
    life.set_rollout_status(conn, first, "cancelled", T0 + 1)
    life.set_rollout_status(conn, second, "running", T0 + 1)
    assert life.take_from_queue(conn) == third
    assert life.take_from_queue(conn) is None


def test_a_retried_rollout_goes_to_the_back_of_the_queue(conn: Conn) -> None:
    retried = queue(conn, config=RETRY)
    waiting = queue(conn)
    attempt = dequeue(conn)
    assert attempt["rollout_id"] == retried
    later = queue(conn, now=T0 + 1)
    life.update_attempt(conn, retried, attempt["attempt_id"], {"status": "failed"}, T0 + 2)
    assert [life.take_from_queue(conn) for _ in range(4)] == [waiting, later, retried, None]


def test_dequeuing_starts_a_preparing_attempt(conn: Conn) -> None:
    rollout_id = queue(conn)
    attempt = dequeue(conn, now=T0 + 1)
    assert attempt["status"] == "preparing" and attempt["sequence_id"] == 1
    assert attempt["start_time"] == T0 + 1
    assert life.rollout(conn, rollout_id)["status"] == "preparing"


# -- workers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "worker_status"),
    [
        ("running", "busy"),
        ("succeeded", "idle"),
        ("failed", "idle"),
        ("timeout", "unknown"),
        ("unresponsive", "unknown"),
    ],
)
def test_the_worker_follows_the_attempt_it_holds(
    conn: Conn, status: str, worker_status: str
) -> None:
    attempt = started(conn, worker_id="w")
    rollout_id, attempt_id = attempt["rollout_id"], attempt["attempt_id"]
    worker = life.worker(conn, "w")
    assert worker is not None
    assert (worker["status"], worker["last_dequeue_time"]) == ("busy", T0)
    assert (worker["current_rollout_id"], worker["current_attempt_id"]) == (rollout_id, attempt_id)
    life.update_attempt(conn, rollout_id, attempt_id, {"status": status}, T0 + 1)
    worker = life.worker(conn, "w")
    assert worker is not None and worker["status"] == worker_status
    holds = worker_status == "busy"
    assert worker["current_attempt_id"] == (attempt_id if holds else None)
    assert worker["last_idle_time"] == (None if holds else T0 + 1)


def test_a_worker_that_finds_the_queue_empty_is_idle(conn: Conn) -> None:
    life.mark_idle(conn, "w", T0)
    worker = life.worker(conn, "w")
    assert worker is not None
    assert (worker["status"], worker["last_idle_time"], worker["last_dequeue_time"]) == (
        "idle",
        T0,
        T0,
    )
    life.mark_idle(conn, "w", T0 + 5)  # still idle: since when stays, the dequeue time moves
    worker = life.worker(conn, "w")
    assert worker is not None
    assert (worker["last_idle_time"], worker["last_dequeue_time"]) == (T0, T0 + 5)


# -- the watchdog -------------------------------------------------------------------------------


def test_the_watchdog_times_out_an_attempt_past_its_timeout(conn: Conn) -> None:
    attempt = started(conn, config={"timeout_seconds": 10}, worker_id="w")
    rollout_id = attempt["rollout_id"]
    life.heartbeat(conn, rollout_id, attempt["attempt_id"], T0 + 9)  # alive, but too long
    watch(conn, T0 + 10)
    assert life.rollout(conn, rollout_id)["status"] == "running"  # at the deadline: not past it
    watch(conn, T0 + 11)
    rollout = life.rollout(conn, rollout_id)
    assert (rollout["status"], rollout["attempt"]["status"]) == ("failed", "timeout")
    worker = life.worker(conn, "w")
    assert worker is not None and worker["status"] == "unknown"


def test_the_watchdog_marks_a_silent_attempt_unresponsive(conn: Conn) -> None:
    attempt = started(conn, config={**RETRY, "unresponsive_seconds": 5})
    rollout_id, attempt_id = attempt["rollout_id"], attempt["attempt_id"]
    watch(conn, T0 + 4)
    life.heartbeat(conn, rollout_id, attempt_id, T0 + 4)
    watch(conn, T0 + 8)  # 4 s since its last span
    assert life.rollout(conn, rollout_id)["attempt"]["status"] == "running"
    watch(conn, T0 + 10)
    rollout = life.rollout(conn, rollout_id)
    assert (rollout["status"], rollout["attempt"]["status"]) == ("requeuing", "unresponsive")
    # a span from it after all: running again, and so is its rollout
    life.heartbeat(conn, rollout_id, attempt_id, T0 + 11)
    rollout = life.rollout(conn, rollout_id)
    assert (rollout["status"], rollout["attempt"]["status"]) == ("running", "running")


def test_the_watchdog_looks_only_at_latest_attempts_of_unfinished_rollouts(conn: Conn) -> None:
    first = started(conn, config={"timeout_seconds": 10})
    rollout_id = first["rollout_id"]
    second = life.new_attempt(conn, rollout_id, None, T0 + 8)
    done = started(conn, config={"timeout_seconds": 10})
    life.update_attempt(conn, done["rollout_id"], "latest", {"status": "succeeded"}, T0 + 1)
    watch(conn, T0 + 12)  # the first attempt is past its deadline, but no longer the latest
    assert attempt_status(conn, rollout_id, first["attempt_id"]) == "preparing"
    assert life.rollout(conn, rollout_id)["status"] == "preparing"
    assert life.rollout(conn, done["rollout_id"])["attempt"]["status"] == "succeeded"
    watch(conn, T0 + 19)
    assert attempt_status(conn, rollout_id, second["attempt_id"]) == "timeout"
    assert attempt_status(conn, rollout_id, first["attempt_id"]) == "preparing"


def test_the_watchdog_can_look_at_some_rollouts_only(conn: Conn) -> None:
    config = {"timeout_seconds": 1}
    asked, other = (started(conn, config=config)["rollout_id"] for _ in range(2))
    watch(conn, T0 + 5, [asked])
    assert life.rollout(conn, asked)["status"] == "failed"
    assert life.rollout(conn, other)["status"] == "preparing"


def test_the_full_scan_runs_once_per_debounce_a_query_checks_its_rollouts_always(
    sql_store: SQLiteStore | PostgresStore,
) -> None:
    clock = Clock(T0)
    api = SQLLightningStore(sql_store, scan_debounce=10, clock=clock)
    config = {"timeout_seconds": 1}
    first, second = api.enqueue_rollouts([{"input": 1, "config": config}] * 2)  # scans at T0
    api.dequeue_rollouts(2, "w")
    assert not api.scan_due()
    clock.advance(5)  # both past their deadline; the last full scan was 5 s ago

    def status(rollout_id: str) -> str:
        with sql_store.transaction() as conn:
            return str(life.rollout(conn, rollout_id)["status"])

    api.watch()
    assert status(first["rollout_id"]) == status(second["rollout_id"]) == "preparing"
    # a query about a rollout never answers with an attempt past its deadline
    asked = api.get_rollout(first["rollout_id"])
    assert asked is not None and asked["status"] == "failed"
    assert status(second["rollout_id"]) == "preparing"
    clock.advance(5)
    assert api.scan_due()
    api.watch()
    assert status(second["rollout_id"]) == "failed"


def test_a_claim_on_the_watchdog_holds_for_its_debounce_where_receivers_share_the_store(
    sql_store: SQLiteStore | PostgresStore,
) -> None:
    with sql_store.transaction() as conn:
        shared = conn.dialect.shared
        assert sql_store.claim(conn, "watchdog", 10, T0)
    with sql_store.transaction() as conn:
        # another receiver 5 s later: one process holding the store always may
        assert sql_store.claim(conn, "watchdog", 10, T0 + 5) is not shared
    with sql_store.transaction() as conn:
        assert sql_store.claim(conn, "watchdog", 10, T0 + 10)


@pytest.mark.postgres
def test_only_one_receiver_holds_the_claim_at_a_time(pg_url: str) -> None:
    first, second = PostgresStore(pg_url), PostgresStore(pg_url)
    first.open()
    second.open()
    try:
        with first.transaction() as held:
            assert first.claim(held, "watchdog", 0, T0)
            with second.transaction() as conn:
                assert not second.claim(conn, "watchdog", 0, T0)
        with second.transaction() as conn:  # released with the first one's transaction
            assert second.claim(conn, "watchdog", 0, T0)
    finally:
        first.close()
        second.close()


@pytest.mark.postgres
def test_a_claim_held_by_a_receiver_that_dies_passes_to_another(pg_url: str) -> None:
    """The receiver holding the watchdog's turn dies mid-transaction (its connection cut, as a
    kill -9 cuts it): PostgreSQL ends its transaction, and the next receiver takes the turn,
    debounce and all, since the dead one's turn was never committed."""
    from .postgres import execute

    first, second = PostgresStore(pg_url), PostgresStore(pg_url)
    first.open()
    second.open()
    try:
        with pytest.raises(StoreUnavailable), first.transaction() as held:
            assert first.claim(held, "watchdog", 10, T0)
            (pid,) = held.execute("SELECT pg_backend_pid()").fetchone()
            with second.transaction() as conn:
                assert not second.claim(conn, "watchdog", 10, T0)
            execute(pg_url, f"SELECT pg_terminate_backend({pid})")
            held.execute("SELECT 1")  # the dead receiver's connection is gone
        with second.transaction() as conn:
            assert second.claim(conn, "watchdog", 10, T0 + 1)
    finally:
        first.close()
        second.close()


def test_a_rollout_put_back_in_the_queue_goes_to_the_back(conn: Conn) -> None:
    """Whether or not its old place was passed over yet (where receivers share the queue, a
    rollout no longer queuing keeps its old place until someone takes one behind it)."""
    first, second, third = (queue(conn) for _ in range(3))
    life.set_rollout_status(conn, first, "cancelled", T0 + 1)
    assert life.take_from_queue(conn) == second
    life.set_rollout_status(conn, first, "queuing", T0 + 2)
    assert [life.take_from_queue(conn) for _ in range(3)] == [third, first, None]
