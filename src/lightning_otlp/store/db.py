"""SQLite plumbing shared by every table owner: one way to run a write transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
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
