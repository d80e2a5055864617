"""Rollouts made by the store's own lifecycle functions inside a test's transaction, at fixed
times: what the LightningStore API's enqueue and dequeue do, without the API around them."""

from __future__ import annotations

from typing import Any, Final

from lightning_otlp.ids import new_rollout_id
from lightning_otlp.store import lifecycle as life
from lightning_otlp.store.dialect import Conn

# A fixed "now": every time in these tests is this plus a few seconds.
T0: Final = 1_000_000.0
RETRY: Final[dict[str, Any]] = {
    "max_attempts": 2,
    "retry_condition": ["failed", "timeout", "unresponsive"],
}


def queue(conn: Conn, *, config: dict[str, Any] | None = None, now: float = T0) -> str:
    """A new rollout at the back of the queue; its id."""
    rollout_id = new_rollout_id()
    life.insert_rollout(conn, rollout_id, "task", None, None, config, None, "queuing", now)
    return rollout_id


def dequeue(conn: Conn, *, worker_id: str | None = None, now: float = T0) -> dict[str, Any]:
    """The rollout at the front of the queue, given a new attempt (and a worker): the attempt."""
    rollout_id = life.take_from_queue(conn)
    assert rollout_id is not None, "the queue is empty"
    attempt = life.new_attempt(conn, rollout_id, worker_id, now)
    life.sync_worker(conn, attempt, dequeue=True, now=now)
    return attempt


def started(
    conn: Conn,
    *,
    config: dict[str, Any] | None = None,
    worker_id: str | None = None,
    now: float = T0,
) -> dict[str, Any]:
    """A rollout queued and dequeued at once (the queue must be empty before): its attempt."""
    rollout_id = queue(conn, config=config, now=now)
    attempt = dequeue(conn, worker_id=worker_id, now=now)
    assert attempt["rollout_id"] == rollout_id
    return attempt


def watch(conn: Conn, now: float, rollout_ids: list[str] | None = None) -> None:
    """One watchdog pass at ``now``, as the API's scan runs it."""
    life.time_out(conn, life.overdue(conn, now, rollout_ids), now)
