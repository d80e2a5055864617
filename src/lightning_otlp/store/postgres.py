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
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

from ..batch import SpanBatch
from ..defaults import DEFAULT_AFFINITY_WINDOW, SEQUENCE_IDS
from ..errors import StoreDamaged, StoreUnavailable
from ..ids import rollout_id_for_trace
from .affinity import Changes, TraceAffinity
from .base import Metric, WriteResult
from .dialect import POSTGRESQL, Conn, Dialect, chunks
from .logs import LogRows
from .migrations import Migration
from .postgres_schema import POSTGRESQL as POSTGRESQL_MIGRATIONS
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
_LOCK_KEYS: Final = {"migrate": 0x4C4F_544C_0001, "watchdog": 0x4C4F_544C_0002}
_LOCK_KEYS_VIEWS: Final = 0x4C4F_544C_0003


class Conflict(Exception):
    """PostgreSQL gave up a transaction because a concurrent one conflicted with it."""


@lru_cache(maxsize=1024)
def _psycopg_sql(sql: str) -> str:
    """The shared SQL's ``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


# ``INSERT INTO table (columns) VALUES (?, ..., ?)``, nothing or ``ON CONFLICT DO NOTHING``
# after it: rows that can go in as one statement over arrays.
_PLAIN_INSERT: Final = re.compile(
    r"INSERT INTO (\w+) \(([\w, ]+)\) VALUES \(\?(?:, \?)*\)( ON CONFLICT DO NOTHING)?"
)


class PgConn:
    """A psycopg connection that takes the shared SQL (``?`` placeholders) and says its
    dialect.

    ``column_types`` (table -> column -> SQL type) is shared by a store's connections: it lets
    a plain insert of many rows go as one statement over one array a column.
    """

    dialect: Dialect = POSTGRESQL

    def __init__(self, conn: Any, column_types: dict[str, dict[str, str]] | None = None) -> None:
        self._conn = conn
        self._types = column_types if column_types is not None else {}

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Any:
        return self._conn.execute(_psycopg_sql(sql), tuple(parameters))

    def executemany(self, sql: str, parameters: Any, /) -> Any:
        rows = [tuple(p) for p in parameters]
        plain = _PLAIN_INSERT.fullmatch(sql) if len(rows) > 1 else None
        if plain is not None:
            # One statement for all rows: PostgreSQL plans and runs it once, where each row of
            # an executemany is a statement of its own (about half the server's CPU a span).
            table, names = plain.group(1), [c.strip() for c in plain.group(2).split(",")]
            types = self._column_types(table)
            columns = [
                _array(types[name], list(values))
                for name, values in zip(names, zip(*rows, strict=True), strict=True)
            ]
            if all(column is not None for column in columns):
                # Binary arrays: psycopg's text form escapes every value in Python.
                arrays = ", ".join(f"%b::{types[name]}[]" for name in names)
                return self._conn.execute(
                    f"INSERT INTO {table} ({', '.join(names)}) SELECT * FROM unnest({arrays})"
                    f"{plain.group(3) or ''}",
                    columns,
                )
        cursor = self._conn.cursor()
        cursor.executemany(_psycopg_sql(sql), rows)
        return cursor

    def _column_types(self, table: str) -> dict[str, str]:
        """A table's columns and their types, read from the catalog once."""
        types = self._types.get(table)
        if types is None:
            types = dict(
                self._conn.execute(
                    "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
                    " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
                    (table,),
                ).fetchall()
            )
            self._types[table] = types
        return types


def _array(sql_type: str, values: list[Any]) -> list[Any] | None:
    """A column's values as one array of one Python type (what psycopg sends as an array):
    numbers made the column's type, None where the values mix types that stay apart."""
    if sql_type == "double precision":
        values = [float(v) if isinstance(v, int) else v for v in values]
    elif sql_type in ("bigint", "integer"):
        values = [int(v) if type(v) is bool else v for v in values]
    kinds = {type(v) for v in values}
    kinds.discard(type(None))
    return values if len(kinds) <= 1 else None


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
        affinity_window, create, translate, prepare_reads, sequence_ids: as ``SQLiteStore``'s.
    """

    def __init__(
        self,
        url: str,
        *,
        affinity_window: float = DEFAULT_AFFINITY_WINDOW,
        create: bool = True,
        salvage: bool = False,
        translate: bool = True,
        prepare_reads: bool = True,
        sequence_ids: str = SEQUENCE_IDS[0],
        migrations: Sequence[Migration] = POSTGRESQL_MIGRATIONS,
    ) -> None:
        if sequence_ids not in SEQUENCE_IDS:
            raise ValueError(f"sequence_ids must be one of {SEQUENCE_IDS}, not {sequence_ids!r}")
        self._conninfo = url
        self.url = redact(url)
        self.affinity = TraceAffinity(affinity_window)
        self.create = create
        self.salvage = salvage
        self.translate = translate
        self.prepare_reads = prepare_reads
        self.sequence_ids = sequence_ids
        self.migrations = migrations
        self._pool: Any = None
        self._down = False
        self._conflicts = 0
        self._column_types: dict[str, dict[str, str]] = {}
        self._conflicts_lock = threading.Lock()
        self._stop = threading.Event()
        self._probe: threading.Thread | None = None

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
                self._migrate(raw)
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot open {self.url}: {_reason(exc)}") from exc
        # The pool retries a lost server on its own and would log each try: the probe below
        # says it once when the server goes and once when it is back.
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
        pool = psycopg_pool.ConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=_POOL_SIZE,
            timeout=_CONNECT_TIMEOUT,
            kwargs={"connect_timeout": int(_CONNECT_TIMEOUT)},
            configure=_configure,
            open=False,
            name="lightning-otlp",
        )
        try:
            pool.open(wait=True, timeout=_CONNECT_TIMEOUT)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            pool.close()
            raise StoreUnavailable(f"cannot open {self.url}: {_reason(exc)}") from exc
        except BaseException:
            pool.close()
            raise
        self._pool = pool
        self._stop.clear()
        self._probe = threading.Thread(target=self._watch_server, name="pg-probe", daemon=True)
        self._probe.start()

    def _migrate(self, raw: Any) -> None:
        """Apply the recorded migrations not yet applied, in one transaction under an advisory
        lock, so receivers starting at once apply each once; refuse a newer schema."""
        with raw.transaction():
            conn = PgConn(raw)
            exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
            if not exists.fetchone()[0] and not self.create:
                raise StoreDamaged(
                    f"no store at {self.url}: nothing was ever stored there (check --store)"
                )
            conn.execute("SELECT pg_advisory_xact_lock(?)", (_LOCK_KEYS["migrate"],))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
            )
            applied = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
            known = {m.name for m in self.migrations}
            newer = sorted(applied - known)
            if newer:
                raise StoreDamaged(
                    f"{self.url} has a schema newer than this lightning-otlp (steps"
                    f" {', '.join(newer)}): upgrade lightning-otlp to use it"
                )
            for migration in self.migrations:
                if migration.name in applied:
                    continue
                for statement in migration.script.split(";"):
                    if statement.strip():
                        raw.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)",
                    (migration.name, time.time()),
                )

    def close(self) -> None:
        self._stop.set()
        if self._probe is not None:
            self._probe.join(timeout=5)
            self._probe = None
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
    def _connection(self, first: str | None = None) -> Iterator[PgConn]:
        """A pooled connection in a transaction (``first`` its first statement); server
        errors become ``StoreUnavailable``, a serialization conflict ``Conflict``."""
        if self._pool is None:
            raise StoreUnavailable(f"{self.url} is not open")
        try:
            with self._pool.connection() as raw, raw.transaction():
                if first is not None:
                    raw.execute(first)
                yield PgConn(raw, self._column_types)
        except (pg_errors.SerializationFailure, pg_errors.DeadlockDetected) as exc:
            raise Conflict(str(exc)) from exc
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            if not self._down:
                log.warning("%s is unreachable: %s", self.url, _reason(exc))
            self._down = True
            raise StoreUnavailable(f"store unreachable: {_reason(exc)}") from exc
        except psycopg.Error as exc:
            raise StoreUnavailable(f"store failing: {_reason(exc)}") from exc

    def transaction(self) -> Any:
        return self._connection()

    def snapshot(self) -> Any:
        # A read-only snapshot marks nothing read: it scans as the planner sees fit.
        return self._connection(
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY;"
            " SET LOCAL enable_seqscan = on"
        )

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
        key = _LOCK_KEYS.get(work, _LOCK_KEYS_VIEWS)
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
        """What the database holds of this request's traces: their bindings, and the per-trace
        rollouts a binding in it could move."""
        affinity = TraceAffinity(self.affinity.window)
        traces: set[bytes] = set(batch.bindings)
        for dest, group in batch.groups.items():
            info = batch.rollouts.get(dest[0])
            if info is not None and info.origin != "explicit":
                traces.update(item[2][0] for item in group)
        for chunk in chunks(list(traces)):
            for trace_id, rollout_id, attempt_id in conn.execute(
                "SELECT trace_id, rollout_id, attempt_id FROM trace_bindings"
                f" WHERE trace_id IN ({', '.join('?' * len(chunk))})",
                chunk,
            ):
                affinity.bindings[bytes(trace_id)] = (rollout_id, attempt_id)
        autos = {rollout_id_for_trace(t.hex()): t for t in batch.bindings}
        for chunk in chunks(list(autos)):
            for rollout_id, created in conn.execute(
                "SELECT rollout_id, created_at FROM rollouts WHERE origin = 'trace'"
                f" AND rollout_id IN ({', '.join('?' * len(chunk))})",
                chunk,
            ):
                affinity.autos[autos[rollout_id]] = (rollout_id, created or 0.0)
        return affinity

    def bind(self, conn: Conn, changes: Changes) -> None:
        now = time.time()
        conn.executemany(
            "INSERT INTO trace_bindings (trace_id, rollout_id, attempt_id, created_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [(trace_id, dest[0], dest[1], now) for trace_id, dest in changes.bound],
        )

    # -- writes ----------------------------------------------------------------------------

    def write_many(self, batches: Sequence[SpanBatch]) -> list[WriteResult]:
        """One transaction for several requests, all or none, run again whole if a concurrent
        transaction (another receiver's) conflicted with it."""

        def once() -> tuple[list[int], list[Changes]]:
            stored: list[int] = []
            made: list[Changes] = []
            with self.transaction() as conn:
                for batch in batches:
                    changes = Changes()
                    stored.append(self.write_in(conn, batch, changes) if batch.groups else 0)
                    made.append(changes)
            return stored, made

        stored, made = self.retrying(once)
        for changes in made:
            self.affinity.count(changes)
        return [
            WriteResult(n, batch.accepted - n) for n, batch in zip(stored, batches, strict=True)
        ]

    def write_logs(self, rows: LogRows) -> int:
        if not rows:
            return 0

        def once() -> int:
            with self.transaction() as conn:
                return insert_logs(conn, rows)

        return self.retrying(once)

    # -- upkeep ----------------------------------------------------------------------------

    def idle_work(self) -> bool:
        """Prepare span views (one receiver at a time) and forget old trace bindings."""
        if not (self.prepare_reads and self.translate) or self._down:
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


def _configure(raw: Any) -> None:
    """Every pooled connection: explicit, serializable transactions, so shared rules stay
    exact; and no sequential scans in them. A sequential scan in a serializable transaction
    marks the whole table read, so every concurrent write to it (another receiver's bindings,
    rollouts, attempts) conflicts and one of the two runs again; an index scan marks only the
    pages it read."""
    raw.autocommit = True
    raw.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
    raw.execute("SET enable_seqscan = off")


def _reason(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


__all__ = ["Conflict", "PgConn", "PostgresStore", "redact"]
