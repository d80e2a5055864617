"""A wake-up for whoever waits on rollouts: set by the commits that may finish one, never polled."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection


class Changes:
    """Wakes the waits on a rollout a commit may have finished; event-loop only.

    A commit names the rollouts it may have finished, and only the waits on one of them look
    again: a wait is one store read a look, and a commit woke every wait before, so many waits
    (or many clients that leave theirs) cost a read each per commit.
    """

    def __init__(self) -> None:
        self._waits: dict[asyncio.Event, frozenset[str] | None] = {}

    @property
    def waiting(self) -> int:
        """Waits now (a gauge in /metrics: waits of clients gone end)."""
        return len(self._waits)

    def notify(self, rollout_ids: Collection[str] | None = None) -> None:
        """Wake the waits on any of ``rollout_ids``; with None, every wait."""
        for event, wanted in self._waits.items():
            if rollout_ids is None or wanted is None or not wanted.isdisjoint(rollout_ids):
                event.set()

    async def wait(self, timeout: float, rollout_ids: Collection[str] | None = None) -> None:
        """Returns at the next ``notify`` naming one of ``rollout_ids`` (None: any), or after
        ``timeout`` seconds."""
        event = asyncio.Event()
        self._waits[event] = None if rollout_ids is None else frozenset(rollout_ids)
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
        finally:
            del self._waits[event]
