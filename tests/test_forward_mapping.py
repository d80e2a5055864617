"""The id mapping on a real SQLite file: a creation requested (in doubt), mapped, and forgotten
when the server lost its rollouts; what survives a restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lightning_otlp.forward.mapping import AttemptMapping, RolloutMapping, Target
from lightning_otlp.forward.outbox import Outbox
from lightning_otlp.receiver.route import RoutingConfig, route

from .payloads import genai_request
from .test_forward_logs import Clock

SERVER = "http://127.0.0.1:9"
LOCAL, ATTEMPT = "ro-00000000aaaa", "at-0000aaaa"


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _open(path: Path, clock: Clock) -> Outbox:
    box = Outbox(str(path), SERVER, synchronous="OFF", log_wait=0, clock=clock.time)
    box.open()
    return box


@pytest.fixture
def outbox(tmp_path: Path, clock: Clock) -> Iterator[Outbox]:
    box = _open(tmp_path / "outbox.db", clock)
    yield box
    box.close()


def test_a_requested_rollout_is_in_doubt_until_mapped(outbox: Outbox, clock: Clock) -> None:
    ids = outbox.ids
    assert ids.rollout(LOCAL) is None and ids.target(LOCAL, ATTEMPT) is None
    ids.rollout_requested(LOCAL, "link-1")
    assert ids.rollout(LOCAL) == RolloutMapping(None, None, "link-1", clock.now)
    ids.rollout_mapped(
        LOCAL, "ro-server", spare_attempt_id="at-spare", status="running", created=True
    )
    assert ids.rollout(LOCAL) == RolloutMapping("ro-server", "at-spare", "link-1", clock.now)
    assert ids.target(LOCAL, ATTEMPT) is None  # the attempt is not mapped yet
    assert outbox.status()["rollouts_created"] == 1
    assert outbox.status()["rollouts_mapped"] == 1


def test_an_attempt_is_mapped_after_its_request(outbox: Outbox) -> None:
    ids = outbox.ids
    ids.rollout_mapped(LOCAL, "ro-server", spare_attempt_id="at-spare", status=None, created=True)
    ids.attempt_requested(LOCAL, ATTEMPT, 3)
    assert ids.attempt(LOCAL, ATTEMPT) == AttemptMapping(None, 3)
    assert ids.target(LOCAL, ATTEMPT) is None
    ids.attempt_mapped(LOCAL, ATTEMPT, "at-spare", "running", spare_used=True)
    assert ids.attempt(LOCAL, ATTEMPT) == AttemptMapping("at-spare", None)
    target = ids.target(LOCAL, ATTEMPT)
    assert target == Target("ro-server", "at-spare")
    assert target is not None and target.server_attempt_id == "at-spare"
    mapping = ids.rollout(LOCAL)
    assert mapping is not None and mapping.spare_attempt_id is None  # given away once


def test_a_found_rollout_is_mapped_without_counting_a_creation(outbox: Outbox) -> None:
    outbox.ids.rollout_mapped(LOCAL, LOCAL, spare_attempt_id=None, status=None, created=False)
    assert outbox.status()["rollouts_created"] == 0
    assert outbox.status()["rollouts_mapped"] == 1


def test_rollouts_the_server_lost_are_forgotten(outbox: Outbox) -> None:
    ids = outbox.ids
    for n in range(3):
        local, attempt = f"ro-00000000000{n}", f"at-0000000{n}"
        ids.rollout_mapped(local, f"ro-s{n}", spare_attempt_id=None, status=None, created=True)
        ids.attempt_mapped(local, attempt, f"at-s{n}", None)
    assert ids.forget_server_rollouts({"ro-s0", "ro-s2", "ro-unknown"}) == 2
    assert ids.rollout("ro-000000000000") is None
    assert ids.attempt("ro-000000000000", "at-00000000") is None
    assert ids.target("ro-000000000001", "at-00000001") == Target("ro-s1", "at-s1")
    status = outbox.status()
    assert status["rollouts_recreated"] == 2 and status["rollouts_mapped"] == 1


def test_the_mapping_and_local_rollouts_survive_a_restart(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "outbox.db"
    box = _open(path, clock)
    request = genai_request(3, rollouts=1, ids=[(LOCAL, ATTEMPT)])
    box.write(route(request, RoutingConfig()))
    box.ids.rollout_mapped(LOCAL, "ro-server", spare_attempt_id=None, status=None, created=True)
    box.ids.attempt_mapped(LOCAL, ATTEMPT, "at-server", None)
    box.close()
    again = _open(path, clock)
    try:
        assert again.ids.target(LOCAL, ATTEMPT) == Target("ro-server", "at-server")
        (record,) = again.store.rollouts()
        local = again.ids.local_rollout(LOCAL)
        assert (local.input, local.mode, local.metadata) == (
            record["input"],
            record["mode"],
            record["metadata"],
        )
        missing = again.ids.local_rollout("ro-000000000bad")
        assert (missing.input, missing.mode, missing.metadata) == (None, None, None)
    finally:
        again.close()
