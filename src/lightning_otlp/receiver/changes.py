"""A wake-up for whoever waits on the store: set after every commit, never polled."""

from __future__ import annotations

import asyncio
import contextlib


class Changes:
    """Wakes every waiter at once when the store may have changed; event-loop only."""

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None
        self.waiting = 0  # waiters now (a gauge in /metrics: waits of clients gone end)

    def notify(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait(self, timeout: float) -> None:
        """Returns at the next ``notify``, or after ``timeout`` seconds."""
        if self._event is None:
            self._event = asyncio.Event()
        event = self._event
        self.waiting += 1
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
        finally:
            self.waiting -= 1
