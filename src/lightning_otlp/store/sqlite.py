"""The embedded store: one SQLite file in WAL mode, one transaction per request or group of
requests committed together. The storage primitives of ``store.sql_store`` and
``store.api_base.SQLBackend`` for SQLite: one writer, so trace affinity lives in memory and no
transaction ever conflicts with another."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final, TypeVar
from urllib.parse import quote

from google.protobuf.message import DecodeError

from ..batch import SpanBatch
from ..defaults import SYNCHRONOUS
from ..errors import StoreDamaged, StoreUnavailable
from .affinity import Changes, TraceAffinity
from .base import DEFAULT_OPTIONS, StoreOptions, WriteResult
from .db import WriterLock, transaction
from .dialect import SQLITE, Conn, Dialect
from .logs import LogRows
from .migrations import SQLITE as SQLITE_MIGRATIONS
from .migrations import Migration, migrate
from .placement import NO_SUCH_ATTEMPT
from .records import ATTEMPT_COLUMNS, ROLLOUT_COLUMNS, SPAN_COLUMNS, resource_bodies, span_records
from .sql_store import SQLStore, insert_logs

log = logging.getLogger("lightning_otlp.store")
T = TypeVar("T")

# Salvage reads by rowid this many rows at a time; without a highest rowid, it stops after
# this many rowids in a row that hold nothing.
_SALVAGE_STEP: Final = 256
_SALVAGE_GAP: Final = 65_536
_WAL_SIZE_LIMIT: Final = 64 * 1024 * 1024
_CACHE_KIB: Final = 64 * 1024


class SQLiteConnection(sqlite3.Connection):
    """SQLite's own connection, saying which SQL it speaks (``store.dialect``)."""

    dialect: Dialect = SQLITE

    def reads_sent(self) -> None:
        """Nothing to do: SQLite's reads are answered in this process as they are made."""


class SQLiteStore(SQLStore):
    """SQLite-backed store; ``path`` may be ``:memory:`` for tests.

    Args:
        path: database file, created with its schema on first open.
        options: what every store takes (``store.base.StoreOptions``).
        synchronous: SQLite's ``synchronous`` pragma; ``FULL`` survives power loss,
            ``NORMAL`` survives a crash of this process only.
        busy_timeout: seconds to wait for a lock before answering "unavailable".
        migrations: the schema's recorded list (``store.migrations``); an outbox adds its own.
    """

    def __init__(
        self,
        path: str,
        options: StoreOptions = DEFAULT_OPTIONS,
        *,
        synchronous: str = "FULL",
        busy_timeout: float = 2.0,
        url: str | None = None,
        migrations: Sequence[Migration] = SQLITE_MIGRATIONS,
    ) -> None:
        if synchronous.upper() not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
        self.path = path
        self.url = url or f"sqlite:///{path}"
        self._synchronous = synchronous.upper()
        # Prepared views are rebuilt if lost: committed without waiting for the disk.
        self._views_synchronous = "OFF" if self._synchronous == "OFF" else "NORMAL"
        self._busy_timeout = busy_timeout
        self._conn: SQLiteConnection | None = None
        self._lock = WriterLock()
        self.adopt(options)
        self.migrations = migrations
        # Reads of the LightningStore API's read threads: each thread its own read-only
        # connection (``snapshot``).
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        if self._conn is not None:
            return
        if self.path != ":memory:":
            if not self.create and not os.path.isfile(self.path):
                raise FileNotFoundError(
                    f"no store at {os.path.abspath(self.path)}: nothing was ever stored there"
                    " (check --store)"
                )
            self._empty_file()
            parent = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(parent, exist_ok=True)
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=False,
                factory=SQLiteConnection,
            )
            conn.execute("PRAGMA journal_mode=WAL")
            # After a checkpoint the WAL file is cut back to this size, so one long read (or a
            # burst of writes) does not leave it at its largest for good.
            conn.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT}")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            # Span ids are random, so each request's index inserts land on pages all over a
            # rollout's part of the index: SQLite's default 2 MiB cache misses on most of them.
            conn.execute(f"PRAGMA cache_size={-_CACHE_KIB}")
            conn.execute("PRAGMA foreign_keys=OFF")
            migrate(conn, self.migrations)
            if self.create:  # a read-only tool routes nothing: it needs no trace affinity
                _can_write(conn, self.url)
                self.load_affinity(conn)
            self._span_top = self._top_rowid(conn)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open {self.url}: {exc}") from exc
        self._conn = conn

    def _empty_file(self) -> None:
        """Name a zero-length file where a store was expected: a read tool refuses it (reading
        would create tables in it), ``serve`` starts a new store in it and says so."""
        if not os.path.isfile(self.path) or os.path.getsize(self.path) != 0:
            return
        wal = self.path + "-wal"
        if os.path.isfile(wal) and os.path.getsize(wal) > 0:
            return  # everything is still in the WAL: a store all the same
        what = f"{os.path.abspath(self.path)} is an empty file (0 bytes), not a store"
        if not self.create:
            raise StoreDamaged(f"{what}: nothing was ever stored in it, or it was truncated")
        log.warning(
            "%s: starting a new store in it (if one was expected there, it was truncated:"
            " stop and restore it)",
            what,
        )

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def ready(self) -> bool:
        return self._conn is not None

    def _connection(self) -> SQLiteConnection:
        if self._conn is None:
            raise StoreUnavailable(f"{self.url} is not open")
        return self._conn

    # -- writes ----------------------------------------------------------------------------

    def write(self, batch: SpanBatch) -> WriteResult:
        if not batch.groups:
            return WriteResult(0, 0)
        with self.write_transaction(yielding=True) as (conn, changes):
            stored = self.write_in(conn, batch, changes)
        return WriteResult(stored, batch.accepted - stored)

    def write_many(self, batches: Sequence[SpanBatch]) -> list[WriteResult]:
        """One transaction for several requests (the pipeline's group commit): one sync to disk
        instead of one each. Each batch sees the trace affinity the ones before it made, as it
        would have after their commits; if the transaction fails, affinity is rebuilt from what
        is on disk, since those changes were never committed."""
        if len(batches) == 1:
            return [self.write(batches[0])]
        stored: list[int] = []
        with self.locked(yielding=True) as conn:
            try:
                with transaction(conn):
                    for batch in batches:
                        changes = Changes()
                        stored.append(self.write_in(conn, batch, changes) if batch.groups else 0)
                        self.affinity.apply(changes, time.time())
            except BaseException as exc:
                if stored:  # what the first batches changed in memory was never committed
                    counters = self.affinity.counters
                    self.affinity = TraceAffinity(self.affinity.window, self.affinity.max_traces)
                    self.affinity.counters = counters
                    self.load_affinity(conn)
                if isinstance(exc, sqlite3.DatabaseError):
                    raise StoreUnavailable(f"store busy or failing: {exc}") from exc
                raise
        return [
            WriteResult(n, batch.accepted - n) for n, batch in zip(stored, batches, strict=True)
        ]

    @contextmanager
    def locked(self, yielding: bool = False) -> Iterator[SQLiteConnection]:
        """The store's connection under its lock, for a table owner sharing the file (the
        forwarder's outbox keeps its own tables beside these); ``yielding``: ingest's turn,
        after everybody else's (``WriterLock``)."""
        with self._lock.yielding() if yielding else self._lock:
            yield self._connection()

    @contextmanager
    def transaction(self, yielding: bool = False) -> Iterator[SQLiteConnection]:
        """One write transaction under the lock; a failing database becomes
        ``StoreUnavailable`` (retryable)."""
        with self.locked(yielding) as conn:
            try:
                with transaction(conn):
                    yield conn
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"store busy or failing: {exc}") from exc
            except sqlite3.DatabaseError as exc:
                raise StoreUnavailable(f"store failing: {exc}") from exc

    @contextmanager
    def write_transaction(
        self, yielding: bool = False
    ) -> Iterator[tuple[SQLiteConnection, Changes]]:
        """``transaction`` whose trace-affinity changes apply once it commits."""
        changes = Changes()
        with self.transaction(yielding) as conn:
            yield conn, changes
        self.affinity.apply(changes, time.time())

    def write_in(self, conn: Conn, batch: SpanBatch, changes: Changes) -> int:
        stored = super().write_in(conn, batch, changes)
        self._span_top = self._top_rowid(conn)
        return stored

    @contextmanager
    def reader(self) -> Iterator[SQLiteConnection]:
        with self.locked() as conn:
            yield conn

    def retrying(self, call: Callable[[], T]) -> T:
        return call()  # one writer: no transaction ever conflicts with another

    def claim(self, conn: Conn, work: str, every: float, now: float) -> bool:
        return True  # one process holds the file

    def reads_apart(self) -> bool:
        return self.path != ":memory:"

    @contextmanager
    def snapshot(self) -> Iterator[SQLiteConnection]:
        """A read transaction on this thread's read-only connection: one consistent view,
        beside the writer (SQLite's WAL lets readers and the writer work at once)."""
        if not self.reads_apart():
            with self.transaction() as conn:
                yield conn
            return
        try:
            conn = self._reader()
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"store busy or failing: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(f"store failing: {exc}") from exc

    def _reader(self) -> SQLiteConnection:
        conn: SQLiteConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            # Read-only: a read thread can never write, whatever a query does.
            uri = "file:" + quote(os.path.abspath(self.path)) + "?mode=ro"
            conn = sqlite3.connect(
                uri,
                uri=True,
                isolation_level=None,
                check_same_thread=False,
                factory=SQLiteConnection,
            )
            conn.execute("PRAGMA busy_timeout = 2000")
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def close_readers(self) -> None:
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()

    def load_affinity(self, conn: Conn) -> None:
        """Rebuild trace affinity from the newest spans and per-trace rollouts on disk."""
        affinity = self.affinity
        limit = affinity.max_traces
        rows = conn.execute(
            "SELECT s.trace_id, s.rollout_id, s.attempt_id FROM spans s"
            " JOIN rollouts r ON r.rollout_id = s.rollout_id AND r.origin = 'explicit'"
            " WHERE s.rowid > (SELECT COALESCE(MAX(rowid), 0) FROM spans) - ?"
            " ORDER BY s.rowid",
            (limit,),
        )
        changes = Changes()
        changes.bound.extend((t, (r, a)) for t, r, a in rows)
        now = time.time()
        for rollout_id, start, metadata in conn.execute(
            "SELECT rollout_id, created_at, metadata FROM rollouts WHERE origin = 'trace'"
            " AND rowid > (SELECT COALESCE(MAX(rowid), 0) FROM rollouts) - ? AND created_at > ?"
            " ORDER BY rowid",
            (limit, now - affinity.window - max(affinity.window, 60.0)),
        ):
            trace_hex = (json.loads(metadata or "{}").get("lightning_otlp") or {}).get("trace_id")
            if trace_hex:
                changes.autos.append((bytes.fromhex(trace_hex), rollout_id, start))
        affinity.apply(changes, now)

    # -- reads -----------------------------------------------------------------------------

    read_errors = (sqlite3.DatabaseError, ValueError, KeyError, DecodeError)

    def read_failed(self, what: str, exc: Exception) -> None:
        """Skip ``what`` when salvaging; otherwise fail with what to do about it."""
        if not self.salvage:
            raise StoreDamaged(
                f"{self.url} is damaged ({exc}) reading {what}: run `lightning-otlp check-store`;"
                " `--salvage` reads whatever is still readable"
            ) from exc
        log.warning("skipped %s: %s", what, exc)

    def salvaged_rollouts(self) -> tuple[list[Any], dict[str, Any]]:
        rollouts = sorted(
            self._salvage_rows("rollouts", ROLLOUT_COLUMNS), key=lambda r: r[2] or 0.0
        )
        latest = {}
        for row in sorted(self._salvage_rows("attempts", ATTEMPT_COLUMNS), key=_by_sequence):
            latest[row[0]] = row
        return rollouts, latest

    def salvaged_spans(
        self, rollout_ids: set[str] | None, attempt_id: str | None
    ) -> Iterator[dict[str, Any]]:
        """The spans still readable row by row, of these rollouts (all when None), in the order
        they were stored, as received (a damaged file's joins cannot be trusted)."""
        resources: dict[str, Any] = {}
        for row in self._salvage_rows("spans", f"{SPAN_COLUMNS}, record"):
            if rollout_ids is not None and row[0] not in rollout_ids:
                continue
            if attempt_id is not None and row[1] != attempt_id:
                continue
            try:
                if row[11] not in resources:
                    with self._lock:
                        resources.update(resource_bodies(self._connection(), [row[11]]))
                record = span_records(row, resources, None)
            except (sqlite3.DatabaseError, ValueError, KeyError, DecodeError) as exc:
                log.warning("skipped span %s of rollout %s: %s", row[4], row[0], exc)
                continue
            yield record

    def _salvage_rows(self, table: str, columns: str) -> Iterator[tuple[Any, ...]]:
        """Rows of ``table`` read by rowid, a range at a time and one row at a time in a range
        that fails: every row whose own page is readable, whatever else is damaged."""
        top = None
        with self._lock:
            try:
                top = self._connection().execute(f"SELECT MAX(rowid) FROM {table}").fetchone()[0]
            except sqlite3.DatabaseError:
                pass
        lost = 0
        start, empty = 1, 0
        # Without the highest rowid, go on until _SALVAGE_GAP rowids in a row hold nothing.
        while (start <= top) if top is not None else (empty < _SALVAGE_GAP):
            end = start + _SALVAGE_STEP - 1
            rows: list[tuple[Any, ...]] = []
            with self._lock:
                conn = self._connection()
                select = f"SELECT {columns} FROM {table} WHERE rowid"
                try:
                    rows = conn.execute(f"{select} BETWEEN ? AND ?", (start, end)).fetchall()
                except sqlite3.DatabaseError:
                    for rowid in range(start, end + 1):
                        try:
                            rows.extend(conn.execute(f"{select} = ?", (rowid,)).fetchall())
                        except sqlite3.DatabaseError:
                            lost += 1
            empty = 0 if rows else empty + _SALVAGE_STEP
            yield from rows
            start = end + 1
        if lost:
            log.warning("skipped %d unreadable row(s) of %s", lost, table)

    def write_logs(self, rows: LogRows) -> int:
        """Commit GenAI log records (``store.logs``) in one transaction; return how many are new."""
        if not rows:
            return 0
        with self.transaction() as conn:
            return insert_logs(conn, rows)

    def idle_work(self) -> bool:
        """One short step of background work, run while no batch waits for the store thread:
        build the next span views (``store.views``). True while there is more to do now."""
        if not (self.prepare_reads and self.translate):
            return False
        try:
            with self.locked(yielding=True) as conn:
                self._span_top = self._top_rowid(conn)
                if not self._views_due():
                    return False  # caught up, or the backlog waits: a read, no write lock
                # Never wait for a lock another process holds: requests would wait behind it.
                # Views are a cache, so their commit is not synced to disk: the next request's
                # commit syncs the log, these pages with it, and the store thread is not held
                # a sync's time for them (about as long as building them took).
                conn.execute("PRAGMA busy_timeout = 0")
                conn.execute(f"PRAGMA synchronous = {self._views_synchronous}")
                try:
                    with transaction(conn):
                        self._build_views_step(conn)
                finally:
                    conn.execute(f"PRAGMA synchronous = {self._synchronous}")
                    conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
                self._span_top = self._top_rowid(conn)
                return self._views_due()
        except sqlite3.OperationalError:
            return False  # the file is busy (another writer): try again when next idle
        except sqlite3.DatabaseError as exc:
            log.warning("stopped preparing span records for reads: %s", exc)
            self.prepare_reads = False
            return False

    def check(self, full: bool = False) -> list[str]:
        """SQLite's own check of every page: ``quick_check``, or ``integrity_check`` (slower,
        also compares each index with its table) with ``full``."""
        pragma = "integrity_check" if full else "quick_check"
        with self._lock:
            try:
                rows = self._connection().execute(f"PRAGMA {pragma}").fetchall()
            except sqlite3.DatabaseError as exc:
                return [str(exc)]
        problems = [str(row[0]) for row in rows]
        return [] if problems == ["ok"] else problems


def _by_sequence(row: tuple[Any, ...]) -> int:
    return int(row[2] or 0)


def _can_write(conn: Conn, url: str) -> None:
    """Refuse at start a store that cannot be written (a read-only file, directory or file
    system): serving it would answer every export with a retryable 503 for ever."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("UPDATE schema_migrations SET name = name")
        finally:
            conn.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        if "readonly" not in str(exc) and "read-only" not in str(exc):
            raise
        raise StoreUnavailable(
            f"cannot write {url}: {exc}; serve needs a writable store (the spans, rollouts and"
            " check-store commands read a read-only one)"
        ) from None


__all__ = ["NO_SUCH_ATTEMPT", "SQLiteConnection", "SQLiteStore"]
