"""WAL checkpoints on a thread of their own, so no request's commit waits for one.

In WAL mode SQLite copies the log back into the database file (a checkpoint) inside whichever
commit makes the log pass ``wal_autocheckpoint`` pages, and with ``synchronous=FULL`` that
commit then waits for two syncs and the copy: about 10-20 ms here, once every few requests
under load, and every request queued behind it waits as long. A checkpoint from another
connection runs beside the writer (SQLite only keeps two checkpoints apart), and the sqlite3
module lets go of the interpreter lock meanwhile, so the store thread commits on. The writer's
own automatic checkpoint stays as a backstop, at a much larger log.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import weakref
from typing import Final

log = logging.getLogger("lightning_otlp.store")

# How often the thread copies new commits back, and the log size (pages) past which
# the writer still checkpoints itself, should this thread fall that far behind.
EVERY_SECONDS: Final = 0.2
BACKSTOP_PAGES: Final = 16_384


class Checkpointer:
    """Copies committed pages back into the database file every ``EVERY_SECONDS`` (nothing to
    copy costs a look at the log's index, no sync).

    Args:
        path: the database file (in WAL mode).
        synchronous: the store's ``synchronous`` pragma: a checkpoint syncs as a commit would.
        owner: the store; the thread ends with it, should it never be closed.
    """

    def __init__(self, path: str, synchronous: str, owner: object) -> None:
        self._path = path
        self._owner = weakref.ref(owner)
        self._synchronous = synchronous
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="lightning-otlp-checkpoint", daemon=True
        )
        self.checkpoints = 0

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            log.warning("checkpoints left to the writer: %s", exc)
            return
        try:
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            conn.execute("PRAGMA busy_timeout = 0")
            while not self._stop.wait(EVERY_SECONDS) and self._owner() is not None:
                self.checkpoint(conn)
        finally:
            conn.close()

    def checkpoint(self, conn: sqlite3.Connection) -> None:
        """One passive checkpoint: as much of the log as no reader still needs; never waits."""
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self.checkpoints += 1
        except sqlite3.OperationalError:
            pass  # busy (another checkpoint, another process): next time
        except sqlite3.DatabaseError as exc:
            log.warning("checkpoints left to the writer: %s", exc)
            self._stop.set()
