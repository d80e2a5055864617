"""A psycopg connection speaking the shared SQL: ``?`` placeholders, the PostgreSQL dialect,
and many rows of a plain insert sent as one statement over binary arrays."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from functools import lru_cache
from typing import Any, Final

from .dialect import POSTGRESQL, Dialect

try:
    import psycopg
except ImportError:  # pragma: no cover - the [postgres] extra is not installed
    psycopg = None  # type: ignore[assignment]


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

    def __init__(
        self,
        conn: Any,
        column_types: dict[str, dict[str, str]] | None = None,
        transaction: Pipelined | None = None,
    ) -> None:
        self._conn = conn
        self._types = column_types if column_types is not None else {}
        self._transaction = transaction
        self._pipeline = None if transaction is None else transaction.pipeline

    def reads_sent(self) -> None:
        """The reads that must see one moment are all sent: a read-only transaction in
        pipeline mode commits with them, so their answers and the commit come in one round
        trip. What it sends after that reads the latest, a statement at a time."""
        if self._transaction is not None and self._transaction.read_only:
            self._transaction.end()
            self._transaction = self._pipeline = None

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Any:
        return self._pending(self._conn.execute(_psycopg_sql(sql), tuple(parameters)))

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
                return self._pending(
                    self._conn.execute(
                        f"INSERT INTO {table} ({', '.join(names)}) SELECT * FROM unnest({arrays})"
                        f"{plain.group(3) or ''}",
                        columns,
                    )
                )
        cursor = self._conn.cursor()
        cursor.executemany(_psycopg_sql(sql), rows)
        return self._pending(cursor)

    def _pending(self, cursor: Any) -> Any:
        return cursor if self._pipeline is None else _Pending(cursor, self._pipeline)

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


class _Pending:
    """A cursor in pipeline mode: its rows are fetched when read (psycopg does that), and its
    row count, known only once the server answered, waits for the answer."""

    def __init__(self, cursor: Any, pipeline: Any) -> None:
        self._cursor = cursor
        self._pipeline = pipeline

    @property
    def rowcount(self) -> int:
        if self._cursor.pgresult is None:
            self._pipeline.sync()
        return int(self._cursor.rowcount)

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return list(self._cursor.fetchall())

    def __iter__(self) -> Iterator[Any]:
        return iter(self._cursor)


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


def configure(raw: Any) -> None:
    """Every pooled connection: explicit, serializable transactions, so shared rules stay
    exact; and no sequential scans in them. A sequential scan in a serializable transaction
    marks the whole table read, so every concurrent write to it (another receiver's bindings,
    rollouts, attempts) conflicts and one of the two runs again; an index scan marks only the
    pages it read."""
    raw.autocommit = True
    raw.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
    raw.execute("SET enable_seqscan = off")


class Pipelined:
    """A transaction in pipeline mode (``pipelined_transaction``), which a read-only one may
    end early (``PgConn.reads_sent``)."""

    def __init__(self, raw: Any, begin: str) -> None:
        self.raw = raw
        self.read_only = "READ ONLY" in begin
        self.ended = False
        self._stack = ExitStack()
        self.pipeline = self._stack.enter_context(raw.pipeline())

    def end(self) -> None:
        """Commit now and leave pipeline mode: one round trip answers all that was sent."""
        self.ended = True
        self.raw.execute("COMMIT", prepare=False)
        self._stack.close()

    def close(self) -> None:
        self._stack.close()


@contextmanager
def pipelined_transaction(raw: Any, begin: str, queue: int | None) -> Iterator[Pipelined]:
    """A transaction in pipeline mode, begun and committed by hand: psycopg's own would wait
    for its COMMIT and then once more to leave the pipeline.

    With ``queue`` (an advisory-lock key), the fleet's dequeues go one at a time. Concurrent
    serializable dequeues read the same queue index pages and each takes a row off them, so
    PostgreSQL aborted all but one (under 8 workers, a third of dequeues ran again). The lock
    is a session lock taken before the transaction begins, so its snapshot is taken once the
    previous dequeue has committed (a transaction's own lock comes after its snapshot); it is
    released in the commit's round trip, so the next dequeue waits one round trip less; a
    receiver that dies releases it with its connection."""
    locked = False
    transaction = Pipelined(raw, begin)
    try:
        try:
            if queue is not None:  # held before the first statement takes the snapshot
                raw.execute("SELECT pg_advisory_lock(%s)", (queue,), prepare=False)
                transaction.pipeline.sync()
                locked = True
            for statement in begin.split("; "):
                raw.execute(statement, prepare=False)
            yield transaction
            if not transaction.ended:
                raw.execute("COMMIT", prepare=False)
                if queue is not None:
                    # Sent with the COMMIT, answered in the pipeline's last sync. Should the
                    # commit (or a statement before it) fail, the server skips the rest of the
                    # pipeline, this included: the lock is then released below.
                    raw.execute("SELECT pg_advisory_unlock(%s)", (queue,), prepare=False)
            transaction.close()
        except BaseException:
            # Out of the aborted state first; the error is the one raised. psycopg's own
            # rollback also forgets the statements it prepared in the transaction, which the
            # server may not have made; should it fail, the pool rolls back (or discards) a
            # connection it gets back in a transaction.
            if not raw.broken and not transaction.ended:
                with suppress(psycopg.Error):
                    transaction.pipeline.sync()
            with suppress(psycopg.Error):
                transaction.close()
            if not raw.broken:
                with suppress(psycopg.Error):
                    raw.rollback()
            raise
        locked = False  # the last sync succeeded: the unlock ran
    finally:
        if locked:
            unlock(raw, queue)


def unlock(raw: Any, key: int | None) -> None:
    """Release the queue lock after a failed dequeue; a connection that cannot is closed,
    which releases it too, so no dequeue anywhere waits on a lock nobody holds."""
    try:
        if not raw.broken:
            with suppress(psycopg.Error):  # a commit that failed left the transaction open
                raw.rollback()
            raw.execute("SELECT pg_advisory_unlock(%s)", (key,), prepare=False)
    except BaseException:
        raw.close()
        raise


def reason(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
