"""The outbox file's embedded store, and the forwarder's only door to its connection.

The outbox's parts (``queue``, ``mapping``, ``waits``, ``mirror``, ``counters``) keep their own
tables in the embedded store's SQLite file and share its connection, so a request's spans and
the outbox's marks commit in one transaction. They reach that connection only through
``LocalFile``: its lock (``locked``), a write transaction (``transaction``), and the embedded
store's write path for requests (``write_group``). Nothing else in ``forward/`` touches
``SQLiteStore``'s connection, lock, write path or trace affinity.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from ..batch import Destination, SpanBatch
from ..errors import StoreUnavailable
from ..store.affinity import Changes, TraceAffinity
from ..store.base import StoreOptions
from ..store.db import transaction
from ..store.migrations import Migration
from ..store.sqlite import SQLiteConnection, SQLiteStore

# What runs inside a group's transaction after each request's records are written: given the
# connection, the request's index in the group and the highest span rowid before it.
AfterWrite = Callable[[SQLiteConnection, int, int], None]
# The bindings of traces whose spans already left the file, newest last (``queue``).
Delivered = Callable[[SQLiteConnection, int], list[tuple[bytes, Destination]]]


class LocalFile:
    """The embedded store of the outbox file and the one place its connection is used.

    Args:
        path: the outbox's SQLite file.
        migrations: the file's recorded schema list (every SQLite store's, then the outbox's).
        delivered: reads where delivered traces went, to rebuild trace affinity (``queue``).
        synchronous, url, options: as ``SQLiteStore``'s.
    """

    def __init__(
        self,
        path: str,
        *,
        migrations: Sequence[Migration],
        delivered: Delivered,
        synchronous: str,
        url: str | None,
        options: StoreOptions,
    ) -> None:
        self.store = SQLiteStore(
            path,
            # its spans leave for the server: nothing reads them back
            dataclasses.replace(options, prepare_reads=False),
            synchronous=synchronous,
            url=url,
            migrations=migrations,
        )
        self._delivered = delivered

    @property
    def path(self) -> str:
        return self.store.path

    @property
    def affinity(self) -> TraceAffinity:
        return self.store.affinity

    def open(self) -> None:
        self.store.open()

    def close(self) -> None:
        self.store.close()

    def ready(self) -> bool:
        return self.store.ready()

    @contextmanager
    def locked(self) -> Iterator[SQLiteConnection]:
        """The connection under the store's lock (autocommit: each statement commits alone)."""
        with self.store.locked() as conn:
            yield conn

    @contextmanager
    def transaction(self) -> Iterator[SQLiteConnection]:
        """The connection under the lock, in one write transaction (rolled back on error)."""
        with self.store.locked() as conn, transaction(conn):
            yield conn

    @staticmethod
    def begin(conn: SQLiteConnection) -> AbstractContextManager[SQLiteConnection]:
        """A write transaction on the connection ``locked`` gave, for work that must follow
        its commit under the same lock."""
        return transaction(conn)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """One autocommitted statement's rows."""
        with self.store.locked() as conn:
            return conn.execute(sql, params).fetchall()

    def commit(self, *statements: tuple[str, Sequence[Any]]) -> None:
        """Several statements in one transaction."""
        with self.transaction() as conn:
            for sql, params in statements:
                conn.execute(sql, params)

    def write_group(self, batches: Sequence[SpanBatch], after: AfterWrite) -> list[int]:
        """Several requests' records in one transaction, all or none, each followed by
        ``after``; the spans each stored. Each request sees the trace affinity the ones
        before it made, as it would have after their commits; if the transaction fails,
        affinity is rebuilt from what is on disk, since those changes were never committed."""
        store = self.store
        if len(batches) == 1:
            with store.write_transaction() as (conn, changes):
                before = _top_span(conn)
                stored = store.write_in(conn, batches[0], changes) if batches[0].groups else 0
                after(conn, 0, before)
            return [stored]
        counts: list[int] = []
        with store.locked() as conn:
            try:
                with transaction(conn):
                    for i, batch in enumerate(batches):
                        changes = Changes()
                        before = _top_span(conn)
                        counts.append(store.write_in(conn, batch, changes) if batch.groups else 0)
                        after(conn, i, before)
                        store.affinity.apply(changes, time.time())
            except BaseException as exc:
                if counts:  # what the first requests changed in memory was never committed
                    self._reload_affinity(conn)
                if isinstance(exc, sqlite3.OperationalError):
                    raise StoreUnavailable(f"store busy or failing: {exc}") from exc
                if isinstance(exc, sqlite3.DatabaseError):
                    raise StoreUnavailable(f"store failing: {exc}") from exc
                raise
        return counts

    def _reload_affinity(self, conn: SQLiteConnection) -> None:
        """Trace affinity as the file has it: the embedded store's, then the delivered traces'."""
        old = self.store.affinity
        fresh = TraceAffinity(old.window, old.max_traces)
        fresh.counters = old.counters
        self.store.affinity = fresh
        self.store.load_affinity(conn)  # the embedded store's own rebuild, as on open
        self.bind_delivered(conn)

    def bind_delivered(self, conn: SQLiteConnection) -> None:
        """Trace affinity for traces whose spans already left the outbox; the pending spans'
        bindings, loaded on open and newer, win."""
        affinity = self.store.affinity
        changes = Changes()
        changes.bound.extend(self._delivered(conn, affinity.max_traces))
        pending_bound = dict(affinity.bindings)
        affinity.bindings.clear()
        affinity.apply(changes, time.time())
        for trace_id, dest in pending_bound.items():
            affinity.bindings.setdefault(trace_id, dest)


def _top_span(conn: SQLiteConnection) -> int:
    top: int = conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM spans").fetchone()[0]
    return top
