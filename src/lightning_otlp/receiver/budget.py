"""The memory budget for request bytes: bodies being read, and their decompressed form.

Reserved before a byte is taken (from Content-Length, or chunk by chunk for a chunked body),
so uploads that stall one byte short cannot pile up past it: the next request is refused with
a retryable answer instead, and the process stays inside its container's memory.
"""

from __future__ import annotations

import threading

from ..defaults import DEFAULT_MAX_REQUEST_MEMORY


class MemoryBudget:
    """Bytes reserved by requests in flight, at most ``limit`` at once; thread-safe."""

    def __init__(self, limit: int = DEFAULT_MAX_REQUEST_MEMORY) -> None:
        if limit <= 0:
            raise ValueError("the request memory budget must be positive")
        self.limit = limit
        self._used = 0
        self._peak = 0
        self._lock = threading.Lock()

    def reserve(self, size: int) -> bool:
        """Reserve ``size`` bytes; False (nothing reserved) when they do not fit."""
        with self._lock:
            if self._used + size > self.limit:
                return False
            self._used += size
            if self._used > self._peak:
                self._peak = self._used
            return True

    def release(self, size: int) -> None:
        with self._lock:
            self._used -= size

    @property
    def used(self) -> int:
        return self._used

    @property
    def peak(self) -> int:
        """The most ever reserved at once (for tests and /metrics)."""
        return self._peak
