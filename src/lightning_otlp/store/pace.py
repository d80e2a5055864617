"""A bound on the interpreter time that reads spend building span records.

A span without a prepared view (``store.views``) is built in Python at read time, and a read
of a whole rollout (``limit=-1``, which upstream allows) may build tens of thousands. The read
threads would then hold the interpreter lock most of the time, and the event loop and the
store thread, which hand the lock back and forth around every SQLite call, would wait up to a
switch interval (5 ms) for it each time: ingest slows far more than the read's CPU share
suggests. So records are built in chunks, one chunk at a time across all read threads, and
after each the builder rests for a multiple of the CPU time the chunk took. A read of a few
hundred spans is barely slowed; a whole large rollout takes longer, and ingest keeps most of
the interpreter.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

# Records built per turn, and the share of the interpreter all reads' building may take.
CHUNK: Final = 100
SHARE: Final = 0.2


class Pace:
    """Turns to build records: one thread at a time, each turn followed by a rest."""

    def __init__(self, share: float = SHARE) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], not {share}")
        self._rest = (1 - share) / share
        self._lock = threading.Lock()

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Build inside; the rest after it is taken holding the turn, so several read
        threads together never build for more than their share."""
        with self._lock:
            started = time.thread_time()
            try:
                yield
            finally:
                time.sleep((time.thread_time() - started) * self._rest)


READS: Final = Pace()
