"""Mirrored statuses on a real SQLite file: only mapped records whose status changed since it
was last mirrored are listed, as named rows, and a finished rollout waits for its held calls."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lightning_otlp.forward.mirror import AttemptStatus, RolloutStatus
from lightning_otlp.forward.outbox import Outbox
from lightning_otlp.receiver.route import RoutingConfig, route

from .payloads import make_request
from .test_forward_logs import ATTEMPT, ROLLOUT, WAIT, Call, Clock

SERVER = "http://127.0.0.1:9"


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    clock = Clock()
    box = Outbox(
        str(tmp_path / "outbox.db"), SERVER, synchronous="OFF", log_wait=WAIT, clock=clock.time
    )
    box.open()
    yield box
    box.close()


def finish(outbox: Outbox, status: str) -> None:
    """The agent's run ends, as its rollout's and attempt's status say."""
    with outbox.store.locked() as conn:
        conn.execute("UPDATE attempts SET status = ?", (status,))
        conn.execute("UPDATE rollouts SET status = ?", (status,))


def map_both(outbox: Outbox) -> None:
    outbox.ids.rollout_mapped(
        ROLLOUT, "ro-s", spare_attempt_id=None, status="running", created=True
    )
    outbox.ids.attempt_mapped(ROLLOUT, ATTEMPT, "at-s", "running")


def test_only_mapped_changed_statuses_are_listed_until_mirrored(outbox: Outbox) -> None:
    call = Call("Done?", "Yes.")
    outbox.write_logs(call.logs())  # its answer is here: the call is released at once
    outbox.write(route(make_request([call.span()]), RoutingConfig()))
    outbox.delivered(outbox.pending_batch(0, 100, 1 << 30)[0])
    statuses = outbox.statuses
    assert statuses.attempts() == [] and statuses.rollouts() == []  # nothing mapped yet
    map_both(outbox)
    assert statuses.attempts() == [] and statuses.rollouts() == []  # mirrored as mapped
    finish(outbox, "succeeded")
    attempts, rollouts = statuses.attempts(), statuses.rollouts()
    assert attempts == [AttemptStatus(ROLLOUT, ATTEMPT, "succeeded", "ro-s", "at-s")]
    assert rollouts == [RolloutStatus(ROLLOUT, "succeeded", "ro-s")]
    statuses.attempt_mirrored(attempts[0])
    statuses.rollout_mirrored(rollouts[0])
    assert statuses.attempts() == [] and statuses.rollouts() == []
    assert outbox.status()["status_updates"] == 2


def test_a_finished_rollout_waits_for_its_held_calls(outbox: Outbox) -> None:
    call = Call("Last?", "Done.")
    outbox.write(route(make_request([call.span()]), RoutingConfig()))
    map_both(outbox)
    finish(outbox, "failed")
    assert outbox.held() == 1
    assert outbox.statuses.attempts() == [] and outbox.statuses.rollouts() == []
    outbox.write_logs(call.logs())
    rows, _ = outbox.pending_batch(0, 100, 1 << 30)
    outbox.delivered(rows)
    assert [s.status for s in outbox.statuses.rollouts()] == ["failed"]
    assert [s.server_attempt_id for s in outbox.statuses.attempts()] == ["at-s"]
