"""Logging of refused requests that a flood of them cannot turn into a flood of lines."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final

DEFAULT_BURST: Final = 5
DEFAULT_INTERVAL: Final = 60.0


class RejectionLog:
    """The first ``burst`` refusals of each kind in an interval are logged one by one; the rest
    are counted and summarised in one line once the interval is over (or at ``flush``).

    Args:
        logger: where the lines go.
        burst: lines logged one by one per kind (transport and status) and interval.
        interval: seconds each kind's count covers.
        clock: monotonic seconds; tests pass their own.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = DEFAULT_BURST,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 0 or interval <= 0:
            raise ValueError("burst must not be negative and interval must be positive")
        self.logger = logger
        self.burst = burst
        self.interval = interval
        self._clock = clock
        # kind -> [interval start, lines logged, requests not logged, level]
        self._kinds: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def refused(self, level: int, kind: str, message: str) -> None:
        """One request answered with ``kind`` (for example ``HTTP 401``) because of ``message``."""
        now = self._clock()
        with self._lock:
            state = self._kinds.get(kind)
            if state is None or now - state[0] >= self.interval:
                if state is not None:
                    self._summarise(kind, state, now)
                state = self._kinds[kind] = [now, 0, 0, level]
            if state[1] < self.burst:
                state[1] += 1
                log_now = True
            else:
                state[2] += 1
                state[3] = max(state[3], level)
                log_now = False
        if log_now:
            self.logger.log(level, "answering %s: %s", kind, message)

    def flush(self) -> None:
        """Summarise whatever is still counted (at shutdown)."""
        now = self._clock()
        with self._lock:
            for kind, state in self._kinds.items():
                self._summarise(kind, state, now)
            self._kinds.clear()

    def _summarise(self, kind: str, state: list[float], now: float) -> None:
        if state[2]:
            self.logger.log(
                int(state[3]),
                "answering %s: %d more request(s) in %.0f s, not logged one by one",
                kind,
                int(state[2]),
                now - state[0],
            )
