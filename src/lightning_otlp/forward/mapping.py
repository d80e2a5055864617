"""The id mapping: each local rollout and attempt and the server's that its spans go to.

The server makes its own ids, so the mapping is committed before it is used, and a creation
request is recorded before it is made: after a crash, a rollout in doubt is found again by its
``link`` and an attempt in doubt by the server's attempt count (see ``delivery.py``). This
module owns ``forward_rollouts`` and ``forward_attempts``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from . import counters
from .local import LocalFile

SCHEMA: Final[tuple[str, ...]] = (
    # Local rollout -> server rollout. server_rollout_id is NULL while a creation request is in
    # doubt; ``link`` (also written into the server rollout's metadata) finds it again.
    """CREATE TABLE IF NOT EXISTS forward_rollouts (
        rollout_id        TEXT PRIMARY KEY,
        server_rollout_id TEXT,
        spare_attempt_id  TEXT,
        link              TEXT NOT NULL,
        requested         REAL NOT NULL,
        mirrored_status   TEXT
    )""",
    # Local attempt -> server attempt. known_attempts: the server's attempt count before a
    # creation request, so a request in doubt can be recognised after a crash.
    """CREATE TABLE IF NOT EXISTS forward_attempts (
        rollout_id        TEXT NOT NULL,
        attempt_id        TEXT NOT NULL,
        server_attempt_id TEXT,
        known_attempts    INTEGER,
        mirrored_status   TEXT,
        PRIMARY KEY (rollout_id, attempt_id)
    )""",
)


class Target(NamedTuple):
    """Where a local attempt's spans go on the server."""

    server_rollout_id: str
    server_attempt_id: str


@dataclass(frozen=True, slots=True)
class RolloutMapping:
    """A local rollout's server rollout; ``server_rollout_id`` is None while a creation request
    is in doubt (``link``, sent in its metadata at ``requested``, finds it again)."""

    server_rollout_id: str | None
    spare_attempt_id: str | None
    link: str
    requested: float


@dataclass(frozen=True, slots=True)
class AttemptMapping:
    """A local attempt's server attempt; None while a creation request is in doubt, with the
    server's attempt count (``known_attempts``) from before the request."""

    server_attempt_id: str | None
    known_attempts: int | None


@dataclass(frozen=True, slots=True)
class LocalRollout:
    """What a server rollout is created from."""

    input: Any
    mode: str | None
    metadata: Any


def mapped(conn: sqlite3.Connection) -> int:
    """Local rollouts with a server rollout."""
    count: int = conn.execute(
        "SELECT COUNT(*) FROM forward_rollouts WHERE server_rollout_id IS NOT NULL"
    ).fetchone()[0]
    return count


class IdMap:
    """Reads and commits of the mapping; each commit is its own transaction.

    Args:
        local: the outbox file.
        clock: the wall clock (``time.time``), for when a creation was requested.
    """

    def __init__(self, local: LocalFile, clock: Callable[[], float]) -> None:
        self._local = local
        self._clock = clock

    def target(self, rollout_id: str, attempt_id: str) -> Target | None:
        """The server rollout and attempt a local attempt maps to, once both are known."""
        found = self._local.execute(
            "SELECT r.server_rollout_id, a.server_attempt_id FROM forward_rollouts r"
            " JOIN forward_attempts a ON a.rollout_id = r.rollout_id"
            " WHERE r.rollout_id = ? AND a.attempt_id = ?"
            " AND r.server_rollout_id IS NOT NULL AND a.server_attempt_id IS NOT NULL",
            (rollout_id, attempt_id),
        )
        return Target._make(found[0]) if found else None

    def rollout(self, rollout_id: str) -> RolloutMapping | None:
        found = self._local.execute(
            "SELECT server_rollout_id, spare_attempt_id, link, requested FROM forward_rollouts"
            " WHERE rollout_id = ?",
            (rollout_id,),
        )
        return RolloutMapping(*found[0]) if found else None

    def local_rollout(self, rollout_id: str) -> LocalRollout:
        found = self._local.execute(
            "SELECT input, mode, metadata FROM rollouts WHERE rollout_id = ?", (rollout_id,)
        )
        input_json, mode, metadata_json = found[0] if found else (None, None, None)
        return LocalRollout(
            json.loads(input_json) if input_json is not None else None,
            mode,
            json.loads(metadata_json) if metadata_json else None,
        )

    def rollout_requested(self, rollout_id: str, link: str) -> None:
        """Committed before a rollout creation request: what finds it again if it is in doubt."""
        self._local.commit(
            ("DELETE FROM forward_rollouts WHERE rollout_id = ?", (rollout_id,)),
            ("DELETE FROM forward_attempts WHERE rollout_id = ?", (rollout_id,)),
            (
                "INSERT INTO forward_rollouts (rollout_id, link, requested) VALUES (?, ?, ?)",
                (rollout_id, link, self._clock()),
            ),
        )

    def rollout_mapped(
        self,
        rollout_id: str,
        server_rollout_id: str,
        *,
        spare_attempt_id: str | None,
        status: str | None,
        created: bool,
    ) -> None:
        """A local rollout goes to ``server_rollout_id`` (which this forwarder ``created``, or
        found); ``spare_attempt_id`` is its first attempt, not yet given to a local one."""
        self._local.commit(
            ("DELETE FROM forward_attempts WHERE rollout_id = ?", (rollout_id,)),
            (
                "INSERT INTO forward_rollouts (rollout_id, server_rollout_id, spare_attempt_id,"
                " link, requested, mirrored_status) VALUES (?, ?, ?, '', ?, ?)"
                " ON CONFLICT (rollout_id) DO UPDATE SET"
                " server_rollout_id = excluded.server_rollout_id,"
                " spare_attempt_id = excluded.spare_attempt_id,"
                " mirrored_status = excluded.mirrored_status",
                (rollout_id, server_rollout_id, spare_attempt_id, self._clock(), status),
            ),
            *([counters.count("rollouts_created")] if created else []),
        )

    def attempt(self, rollout_id: str, attempt_id: str) -> AttemptMapping | None:
        found = self._local.execute(
            "SELECT server_attempt_id, known_attempts FROM forward_attempts"
            " WHERE rollout_id = ? AND attempt_id = ?",
            (rollout_id, attempt_id),
        )
        return AttemptMapping(*found[0]) if found else None

    def attempt_requested(self, rollout_id: str, attempt_id: str, known_attempts: int) -> None:
        """Committed before an attempt creation request, with the server's attempt count."""
        self._local.commit(
            (
                "INSERT OR REPLACE INTO forward_attempts (rollout_id, attempt_id,"
                " known_attempts) VALUES (?, ?, ?)",
                (rollout_id, attempt_id, known_attempts),
            )
        )

    def attempt_mapped(
        self,
        rollout_id: str,
        attempt_id: str,
        server_attempt_id: str,
        status: str | None,
        *,
        spare_used: bool = False,
    ) -> None:
        """A local attempt goes to ``server_attempt_id``; ``spare_used`` when it is the server
        rollout's first attempt."""
        statements: list[tuple[str, tuple[Any, ...]]] = [
            (
                "INSERT OR REPLACE INTO forward_attempts (rollout_id, attempt_id,"
                " server_attempt_id, mirrored_status) VALUES (?, ?, ?, ?)",
                (rollout_id, attempt_id, server_attempt_id, status),
            )
        ]
        if spare_used:
            statements.append(
                (
                    "UPDATE forward_rollouts SET spare_attempt_id = NULL WHERE rollout_id = ?",
                    (rollout_id,),
                )
            )
        self._local.commit(*statements)

    def forget_server_rollouts(self, server_rollout_ids: set[str]) -> int:
        """Drop the mapping of local rollouts that went to these (lost) server rollouts, so they
        are created again; the number of local rollouts forgotten."""
        marks = ",".join("?" * len(server_rollout_ids))
        local = [
            rollout_id
            for (rollout_id,) in self._local.execute(
                f"SELECT rollout_id FROM forward_rollouts WHERE server_rollout_id IN ({marks})",
                tuple(server_rollout_ids),
            )
        ]
        statements: list[tuple[str, tuple[Any, ...]]] = []
        for rollout_id in local:
            statements.append(("DELETE FROM forward_rollouts WHERE rollout_id = ?", (rollout_id,)))
            statements.append(("DELETE FROM forward_attempts WHERE rollout_id = ?", (rollout_id,)))
        statements.append(counters.count("rollouts_recreated", len(local)))
        self._local.commit(*statements)
        return len(local)
