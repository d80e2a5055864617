"""The shared store: PostgreSQL behind many receivers (``--store postgresql://...``).

The storage primitives of ``store.sql_store`` and ``store.api_base.SQLBackend`` for a database
several processes write at once. Every write transaction is ``SERIALIZABLE``: the rules written
once for one writer (trace affinity, sequence ids, the lifecycle, the queue) stay exact across
receivers, because PostgreSQL aborts whichever of two transactions would break them, and that
transaction is run again whole (``retrying``). Trace affinity lives in a table, so a trace bound
on one receiver is followed on all. Work meant to run once for all (the watchdog, preparing
views) is claimed with an advisory lock, released if its holder dies.

A write is acknowledged after PostgreSQL committed it (``synchronous_commit`` as the server
has it, on by default). An unreachable server answers retryable (``StoreUnavailable``), readiness
goes not-ready, and a probe brings it back once the server answers again.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

from ..batch import Destination, SpanBatch
from ..errors import StoreUnavailable
from ..ids import rollout_id_for_trace
from . import placement
from .affinity import Changes, TraceAffinity
from .base import DEFAULT_OPTIONS, Metric, StoreOptions, WriteResult
from .dialect import Conn, chunks
from .logs import LogRows
from .migrations import Migration
from .postgres_conn import PgConn, configure, pipelined_transaction, reason
from .postgres_schema import POSTGRESQL as POSTGRESQL_MIGRATIONS
from .postgres_schema import migrate, month_partitions
from .sql_store import SQLStore, insert_logs

try:
    import psycopg
    import psycopg_pool
    from psycopg import errors as pg_errors
except ImportError:  # pragma: no cover - the [postgres] extra is not installed
    psycopg = None  # type: ignore[assignment]

log = logging.getLogger("lightning_otlp.store")
T = TypeVar("T")

# A transaction PostgreSQL aborted to keep concurrent ones serializable is run again; after this
# many tries the client is told to retry (503 / UNAVAILABLE).
_TRIES: Final = 30
_POOL_SIZE: Final = 8
_CONNECT_TIMEOUT: Final = 5.0
_PROBE_EVERY: Final = 1.0
# Bindings older than this are forgotten (as the embedded store forgets its oldest).
_BINDING_HORIZON: Final = 24 * 3600.0
# The advisory-lock keys of work done once for all receivers (any 64-bit number, fixed).
_LOCK_KEYS: Final = {
    "migrate": 0x4C4F_544C_0001,
    "watchdog": 0x4C4F_544C_0002,
    "views": 0x4C4F_544C_0003,
    "partitions": 0x4C4F_544C_0004,
    "queue": 0x4C4F_544C_0005,
}
_PARTITIONS_EVERY: Final = 3600.0
# Rollouts written at once, each on its own pooled connection: fewer than the pool holds, so
# the LightningStore API's calls still find one free.
_WRITERS: Final = 4
_WRITE: Final = "BEGIN ISOLATION LEVEL SERIALIZABLE"
# A read snapshot: one consistent view that takes no serializable read marks.
_SNAPSHOT: Final = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL enable_seqscan = on"


class Conflict(Exception):
    """PostgreSQL gave up a transaction because a concurrent one conflicted with it."""


def redact(url: str) -> str:
    """The URL with its password hidden: it is shown in logs, status and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class PostgresStore(SQLStore):
    """A store in a PostgreSQL database many receivers share.

    Args:
        url: a libpq URL (``postgresql://USER[:PASSWORD]@HOST:PORT/DB?sslmode=...``); libpq's
            own ``PGPASSWORD`` and ``PGPASSFILE`` give the password too.
        options: what every store takes (``store.base.StoreOptions``).
    """

    shared = True

    def __init__(
        self,
        url: str,
        options: StoreOptions = DEFAULT_OPTIONS,
        *,
        migrations: Sequence[Migration] = POSTGRESQL_MIGRATIONS,
    ) -> None:
        self._conninfo = url
        self.url = redact(url)
        self.adopt(options)
        self.migrations = migrations
        self._pool: Any = None
        self._partitions_due = 0.0
        self._down = False
        self._conflicts = 0
        self._column_types: dict[str, dict[str, str]] = {}
        self._conflicts_lock = threading.Lock()
        self._stop = threading.Event()
        self._probe: threading.Thread | None = None
        self._writers = _writers()

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        if self._pool is not None:
            return
        if psycopg is None:
            raise StoreUnavailable(
                f"{self.url} needs the PostgreSQL driver: pip install 'lightning-otlp[postgres]'"
            )
        try:  # one connection first: its error names the cause (host, password, database)
            with psycopg.connect(self._conninfo, connect_timeout=int(_CONNECT_TIMEOUT)) as raw:
                raw.autocommit = True
                migrate(raw, self.migrations, self.url, self.create, _LOCK_KEYS["migrate"])
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot open {self.url}: {reason(exc)}") from exc
        # The pool retries a lost server on its own and would log each try: the probe below
        # says it once when the server goes and once when it is back.
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
        pool = psycopg_pool.ConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=_POOL_SIZE,
            timeout=_CONNECT_TIMEOUT,
            kwargs={"connect_timeout": int(_CONNECT_TIMEOUT)},
            configure=configure,
            open=False,
            name="lightning-otlp",
        )
        try:
            pool.open(wait=True, timeout=_CONNECT_TIMEOUT)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            pool.close()
            raise StoreUnavailable(f"cannot open {self.url}: {reason(exc)}") from exc
        except BaseException:
            pool.close()
            raise
        self._pool = pool
        self._writers = _writers()
        self._stop.clear()
        self._probe = threading.Thread(target=self._watch_server, name="pg-probe", daemon=True)
        self._probe.start()

    def close(self) -> None:
        self._stop.set()
        if self._probe is not None:
            self._probe.join(timeout=5)
            self._probe = None
        self._writers.shutdown()
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def ready(self) -> bool:
        return self._pool is not None and not self._down

    def _watch_server(self) -> None:
        """While the server is unreachable, try it once a second; ready again once it answers."""
        while not self._stop.wait(_PROBE_EVERY):
            if not self._down:
                continue
            try:
                with self._pool.connection(timeout=_PROBE_EVERY) as raw:
                    raw.execute("SELECT 1")
            except Exception:  # noqa: BLE001 - still down, whatever the reason
                continue
            log.info("%s answers again", self.url)
            self._down = False

    # -- storage primitives ----------------------------------------------------------------

    @contextmanager
    def _connection(
        self, begin: str | None = None, *, pipelined: bool = False, queue: bool = False
    ) -> Iterator[PgConn]:
        """A pooled connection in a transaction; server errors become ``StoreUnavailable``, a
        serialization conflict ``Conflict``.

        ``pipelined``: statements whose results are not read yet go to the server together
        (psycopg's pipeline mode) and the transaction is ``begin``'s, so a call waits on the
        server where it reads and once to commit, not once a statement. ``queue``: the fleet's
        queue lock is held around it (``_pipelined``)."""
        if self._pool is None:
            raise StoreUnavailable(f"{self.url} is not open")
        if self._down:  # answer at once: the probe says when the server is back
            raise StoreUnavailable(f"{self.url} is unreachable")
        try:
            with self._pool.connection() as raw:
                if not pipelined:
                    with raw.transaction():
                        yield PgConn(raw, self._column_types)
                    return
                lock = _LOCK_KEYS["queue"] if queue else None
                with pipelined_transaction(raw, begin or _WRITE, lock) as transaction:
                    yield PgConn(raw, self._column_types, transaction)
        except (pg_errors.SerializationFailure, pg_errors.DeadlockDetected) as exc:
            raise Conflict(str(exc)) from exc
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            if not self._down:
                log.warning("%s is unreachable: %s", self.url, reason(exc))
            self._down = True
            raise StoreUnavailable(f"store unreachable: {reason(exc)}") from exc
        except psycopg.Error as exc:
            raise StoreUnavailable(f"store failing: {reason(exc)}") from exc

    def transaction(self, *, pipelined: bool = False, queue: bool = False) -> Any:
        return self._connection(pipelined=pipelined, queue=queue)

    def snapshot(self) -> Any:
        # A read-only snapshot marks nothing read: it scans as the planner sees fit.
        return self._connection(_SNAPSHOT, pipelined=True)

    def reader(self) -> Any:
        return self.snapshot()

    def retrying(self, call: Callable[[], T]) -> T:
        for attempt in range(_TRIES):
            try:
                return call()
            except Conflict:
                with self._conflicts_lock:
                    self._conflicts += 1
                # Back off a little, more each time, at random: the two that conflicted should
                # not meet again at once.
                time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
        raise StoreUnavailable("too many concurrent writes conflicted: retry")

    def claim(self, conn: Conn, work: str, every: float, now: float) -> bool:
        key = _LOCK_KEYS[work]
        if not conn.execute("SELECT pg_try_advisory_xact_lock(?)", (key,)).fetchone()[0]:
            return False  # another receiver is doing it right now
        if every > 0:
            row = conn.execute("SELECT done_at FROM fleet_work WHERE work = ?", (work,)).fetchone()
            if row is not None and now - row[0] < every:
                return False
            conn.execute(
                "INSERT INTO fleet_work (work, done_at) VALUES (?, ?)"
                " ON CONFLICT (work) DO UPDATE SET done_at = excluded.done_at",
                (work, now),
            )
        return True

    def metrics(self) -> list[Metric]:
        return [
            *super().metrics(),
            Metric(
                "lightning_otlp_store_conflicts",
                "Transactions PostgreSQL aborted as conflicting with a concurrent one, and ran"
                " again.",
                "counter",
                self._conflicts,
            ),
        ]

    def reads_apart(self) -> bool:
        return True

    def close_readers(self) -> None:
        """Pooled connections are the pool's to close."""

    # -- trace affinity in the database ----------------------------------------------------

    def affinity_for(self, conn: Conn, batch: SpanBatch) -> TraceAffinity:
        """What the database holds of this request's traces: the per-trace rollouts a binding
        in it could move, and the bindings of the traces that have one, or whose spans follow
        one. A trace bound by explicit ids alone is not looked up: reads mark index pages read
        in a serializable transaction, and concurrent writes to them would conflict."""
        affinity = TraceAffinity(self.affinity.window)
        autos = {rollout_id_for_trace(t.hex()): t for t in batch.bindings}
        for chunk in chunks(list(autos)):
            for rollout_id, created in conn.execute(
                "SELECT rollout_id, created_at FROM rollouts WHERE origin = 'trace'"
                f" AND rollout_id IN ({', '.join('?' * len(chunk))})",
                chunk,
            ):
                affinity.autos[autos[rollout_id]] = (rollout_id, created or 0.0)
        traces: set[bytes] = set(affinity.autos)
        for dest, group in batch.groups.items():
            info = batch.rollouts.get(dest[0])
            if info is not None and info.origin != "explicit":
                traces.update(row.trace_id for _, _, row in group)
        for chunk in chunks(list(traces)):
            for trace_id, rollout_id, attempt_id in conn.execute(
                "SELECT trace_id, rollout_id, attempt_id FROM trace_bindings"
                f" WHERE trace_id IN ({', '.join('?' * len(chunk))})",
                chunk,
            ):
                affinity.bindings[bytes(trace_id)] = (rollout_id, attempt_id)
        return affinity

    def bind(self, conn: Conn, changes: Changes) -> None:
        # In the transaction of the rollout the traces are bound to, though the table is keyed
        # by trace: a binding names the attempt this transaction resolved and must commit with
        # its spans, and only that rollout's transactions write it (first binding wins).
        now = time.time()
        conn.executemany(
            "INSERT INTO trace_bindings (trace_id, rollout_id, attempt_id, created_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [(trace_id, dest[0], dest[1], now) for trace_id, dest in changes.bound],
        )

    # -- writes ----------------------------------------------------------------------------

    def write_many(self, batches: Sequence[SpanBatch]) -> list[WriteResult]:
        """Each rollout's spans, from every request, in a transaction of its own, run again on
        its own after a conflict: no transaction names two rollouts (``store.postgres_schema``:
        the tables can be distributed by rollout). The rollouts commit at once, on a few
        pooled connections, so PostgreSQL's group commit shares the WAL flushes. A request is
        answered once all its rollouts committed; if one failed, its error is raised, and the
        requests are written again (what committed is stored once, whatever is sent again)."""
        if self._pool is None:  # closed: its writers are gone too
            raise StoreUnavailable(f"{self.url} is not open")
        known = self._bound_before(batches)
        units: dict[str, list[tuple[int, SpanBatch]]] = {}
        for index, batch in enumerate(batches):
            for rollout_id, part in placement.by_rollout(batch, known).items():
                units.setdefault(rollout_id, []).append((index, part))
            for trace_id, dest in batch.bindings.items():  # as a later request would see it
                known.setdefault(trace_id, dest)
        jobs = list(units.values())
        if len(jobs) == 1:
            done = [self._commit_unit(jobs[0])]
        else:
            futures = [self._writers.submit(self._commit_unit, job) for job in jobs]
            wait(futures)  # every rollout committed or failed before the requests are told
            done = [future.result() for future in futures]
        stored = [0] * len(batches)
        for batch in batches:
            batch.refused = {}
        for job, counts in zip(jobs, done, strict=True):
            for (index, part), n in zip(job, counts, strict=True):
                stored[index] += n
                refused = batches[index].refused
                for why, count in part.refused.items():
                    refused[why] = refused.get(why, 0) + count
        return [
            WriteResult(n, batch.accepted - n) for n, batch in zip(stored, batches, strict=True)
        ]

    def _commit_unit(self, parts: list[tuple[int, SpanBatch]]) -> list[int]:
        """One rollout's parts of several requests in one transaction, run again whole after a
        conflict; the spans each part stored."""

        def once() -> tuple[list[int], list[Changes]]:
            stored: list[int] = []
            made: list[Changes] = []
            with self.transaction() as conn:
                for _, part in parts:
                    changes = Changes()
                    stored.append(self.write_in(conn, part, changes))
                    made.append(changes)
            return stored, made

        stored, made = self.retrying(once)
        for changes in made:
            self.affinity.count(changes)
        return stored

    def _bound_before(self, batches: Sequence[SpanBatch]) -> dict[bytes, Destination]:
        """The bindings the database holds of the traces whose spans follow one (spans without
        explicit ids): which rollout those spans go to, so they commit with its spans."""
        traces: set[bytes] = set()
        for batch in batches:
            for dest, group in batch.groups.items():
                info = batch.rollouts.get(dest[0])
                if info is not None and info.origin != "explicit":
                    traces.update(row.trace_id for _, _, row in group)
        known: dict[bytes, Destination] = {}
        if not traces:
            return known
        with self.snapshot() as conn:
            for chunk in chunks(list(traces)):
                for trace_id, rollout_id, attempt_id in conn.execute(
                    "SELECT trace_id, rollout_id, attempt_id FROM trace_bindings"
                    f" WHERE trace_id IN ({', '.join('?' * len(chunk))})",
                    chunk,
                ):
                    known[bytes(trace_id)] = (rollout_id, attempt_id)
        return known

    def write_logs(self, rows: LogRows) -> int:
        if not rows:
            return 0

        def once() -> int:
            with self.transaction() as conn:
                return insert_logs(conn, rows)

        return self.retrying(once)

    # -- upkeep ----------------------------------------------------------------------------

    def idle_work(self) -> bool:
        """Make the coming months' span partitions (hourly, one receiver), prepare span views
        (one receiver at a time) and forget old trace bindings."""
        if self._down:
            return False
        self._make_partitions()
        if not (self.prepare_reads and self.translate):
            return False
        try:
            with self.transaction() as conn:
                if not self.claim(conn, "views", 0, time.time()):
                    return False
                self._span_top = self._top_rowid(conn)
                if self._span_top <= self._views_at:
                    conn.execute(
                        "DELETE FROM trace_bindings WHERE created_at < ?",
                        (time.time() - _BINDING_HORIZON,),
                    )
                    return False
                self._build_views_step(conn)
                return bool(self._views_at < self._span_top)
        except (Conflict, StoreUnavailable):
            return False

    def _make_partitions(self) -> None:
        now = time.time()
        if now < self._partitions_due:
            return
        self._partitions_due = now + _PARTITIONS_EVERY
        try:
            with self.transaction() as conn:
                if self.claim(conn, "partitions", _PARTITIONS_EVERY, now):
                    for statement in month_partitions(now):
                        conn.execute(statement)
        except (Conflict, StoreUnavailable) as exc:
            # e.g. a month whose spans already went to the default partition (a clock far
            # ahead): they stay there, readable; the month is tried again in an hour
            log.warning("could not make the coming months' span partitions: %s", exc)

    def check(self, full: bool = False) -> list[str]:
        """PostgreSQL checks its own pages; what is checked here is that it answers and that
        every recorded step of the schema is one this version knows."""
        try:
            with self.reader() as conn:
                names = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
        except StoreUnavailable as exc:
            return [str(exc)]
        unknown = names - {m.name for m in self.migrations}
        return [f"schema steps this version does not know: {sorted(unknown)}"] if unknown else []


def _writers() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(_WRITERS, thread_name_prefix="lightning-otlp-pg-writer")


__all__ = ["Conflict", "PgConn", "PostgresStore", "redact"]
