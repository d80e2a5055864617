"""Mirrored statuses: local rollout and attempt statuses the server has not been told yet.

Each mapped rollout and attempt remembers the status last mirrored (``mapping``'s tables), so
only changes are sent. A finished status reaches the server only once no span of its rollout
is held for log records: a trainer reads a finished rollout's spans once, and a held model
call must be among them.
"""

from __future__ import annotations

from typing import NamedTuple

from . import counters
from .local import LocalFile
from .waits import NOT_HELD, LogWaits


class AttemptStatus(NamedTuple):
    """A local attempt's status to mirror, and the server attempt it goes to."""

    rollout_id: str
    attempt_id: str
    status: str
    server_rollout_id: str
    server_attempt_id: str


class RolloutStatus(NamedTuple):
    """A local rollout's status to mirror, and the server rollout it goes to."""

    rollout_id: str
    status: str
    server_rollout_id: str


class Mirror:
    """What changed locally since it was last mirrored, and the record that it was."""

    def __init__(self, local: LocalFile, waits: LogWaits) -> None:
        self._local = local
        self._waits = waits

    def attempts(self) -> list[AttemptStatus]:
        return list(
            map(
                AttemptStatus._make,
                self._local.execute(
                    "SELECT a.rollout_id, a.attempt_id, a.status, r.server_rollout_id,"
                    " f.server_attempt_id FROM forward_attempts f"
                    " JOIN attempts a ON a.rollout_id = f.rollout_id"
                    " AND a.attempt_id = f.attempt_id"
                    " JOIN forward_rollouts r ON r.rollout_id = f.rollout_id"
                    " WHERE f.server_attempt_id IS NOT NULL AND r.server_rollout_id IS NOT NULL"
                    " AND a.status IS NOT f.mirrored_status"
                    + (NOT_HELD % "a" if self._waits.waits else "")
                ),
            )
        )

    def rollouts(self) -> list[RolloutStatus]:
        return list(
            map(
                RolloutStatus._make,
                self._local.execute(
                    "SELECT r.rollout_id, r.status, f.server_rollout_id FROM forward_rollouts f"
                    " JOIN rollouts r ON r.rollout_id = f.rollout_id"
                    " WHERE f.server_rollout_id IS NOT NULL AND r.status IS NOT f.mirrored_status"
                    + (NOT_HELD % "r" if self._waits.waits else "")
                ),
            )
        )

    def attempt_mirrored(self, change: AttemptStatus) -> None:
        self._local.commit(
            (
                "UPDATE forward_attempts SET mirrored_status = ?"
                " WHERE rollout_id = ? AND attempt_id = ?",
                (change.status, change.rollout_id, change.attempt_id),
            ),
            counters.count("status_updates"),
        )

    def rollout_mirrored(self, change: RolloutStatus) -> None:
        self._local.commit(
            (
                "UPDATE forward_rollouts SET mirrored_status = ? WHERE rollout_id = ?",
                (change.status, change.rollout_id),
            ),
            counters.count("status_updates"),
        )
