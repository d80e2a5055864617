"""SQLite plumbing shared by every table owner: one way to run a write transaction."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TypeVar

C = TypeVar("C", bound=sqlite3.Connection)


@contextmanager
def transaction(conn: C) -> Iterator[C]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back on any exception (the connection must be in
    autocommit mode, ``isolation_level=None``, so that SQLite's own implicit transactions never
    start one behind our back). Taking the write lock at BEGIN makes a busy database fail here,
    before any work is done, rather than at the first write."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class WriterLock:
    """The lock on a store's one connection, with a back seat: ingest's group commits and
    background work take it ``yielding``, only when nobody else waits for it. A LightningStore
    API write then waits for the commit in progress at most, not for every group queued after
    it (a plain lock goes to whichever thread runs first, mostly the one that just let it go)."""

    def __init__(self) -> None:
        self._state = threading.Condition(threading.Lock())
        self._held = False
        self._waiting = 0  # those waiting in front: not yielding
        self.queued = 0  # every thread waiting for it

    def acquire(self, yielding: bool = False) -> None:
        with self._state:
            if not yielding:
                self._waiting += 1
            self.queued += 1
            try:
                while self._held or (yielding and self._waiting):
                    self._state.wait()
            finally:
                self.queued -= 1
                if not yielding:
                    self._waiting -= 1
            self._held = True

    def release(self) -> None:
        with self._state:
            self._held = False
            self._state.notify_all()

    @contextmanager
    def yielding(self) -> Iterator[None]:
        self.acquire(yielding=True)
        try:
            yield
        finally:
            self.release()

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
