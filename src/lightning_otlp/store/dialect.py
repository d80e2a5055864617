"""What differs between the SQL of the backends, in one place.

The store's policy (routing spans into rollouts, the lifecycle, the queue, sequence ids) is
written once, in SQL both SQLite and PostgreSQL run, with ``?`` placeholders. The few phrases
they spell differently come from the connection's ``dialect``; everything else is shared.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Any: ...


class Conn(Protocol):
    """A connection inside a transaction: SQLite's own, or PostgreSQL's behind a thin adapter
    that takes the same ``?`` placeholders."""

    @property
    def dialect(self) -> Dialect: ...

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Any: ...

    def reads_sent(self) -> None:
        """In a read-only snapshot: the reads that must see one moment are all sent (a server
        may then answer them and end the snapshot in one round trip); what follows may read a
        later moment."""


@dataclass(frozen=True, slots=True)
class Dialect:
    """Phrases that differ, each named for what it means.

    Attributes:
        name: ``sqlite`` or ``postgresql``.
        greatest: the larger of two values (SQLite's two-argument ``MAX``).
        no_limit: a ``LIMIT`` that limits nothing, for an ``OFFSET`` alone.
        queue_index: a hint that reads the queue by its own index (SQLite's planner would sort
            every queued rollout by status otherwise).
        skip_locked: rows another transaction holds are passed over (a queue many receivers
            take from); SQLite has one writer at a time and needs none.
        text_ids: a span id that is not hex is kept as text (SQLite's columns take any type).
        shared: several processes write at once (trace affinity then lives in the database).
        queue_back: the queue position behind every queued rollout. PostgreSQL takes it from a
            sequence: reading the highest position would make every two concurrent enqueues
            conflict (and one of them run again).
        view_key: the unique key of ``span_views``. PostgreSQL's leads with the rollout (a
            table distributed by rollout needs it in every unique key); SQLite keeps the span's
            rowid alone, its table's own row key, the cheapest to write and look up.
    """

    name: str
    greatest: str
    no_limit: str
    queue_index: str
    skip_locked: str
    text_ids: bool
    shared: bool
    queue_back: str
    view_key: str

    def insert_new(self, table: str, columns: str, count: int) -> str:
        """An insert of rows that skips any already there (by a unique key). SQLite's own
        ``OR IGNORE`` costs it less than the standard ``ON CONFLICT DO NOTHING``."""
        values = ", ".join("?" * count)
        if self.name == "sqlite":
            return f"INSERT OR IGNORE INTO {table} ({columns}) VALUES ({values})"
        return f"INSERT INTO {table} ({columns}) VALUES ({values}) ON CONFLICT DO NOTHING"

    def contains(self, column: str) -> str:
        """``column`` contains the next parameter (plain text, no wildcards)."""
        function = "instr" if self.name == "sqlite" else "strpos"
        return f"{function}({column}, ?) > 0"

    def json_number(self, column: str, key: str) -> str:
        """A number stored under ``key`` in the JSON object ``column`` holds (NULL if none)."""
        if self.name == "sqlite":
            return f"json_extract({column}, '$.{key}')"
        return f"CAST(CAST({column} AS jsonb) ->> '{key}' AS double precision)"

    def id_text(self, column: str) -> str:
        """A span id column as upstream's records show it: bytes as lowercase hex."""
        if self.name == "sqlite":
            return (
                f"CASE WHEN typeof({column}) = 'blob' THEN lower(hex({column})) ELSE {column} END"
            )
        return f"encode({column}, 'hex')"

    def id_key(self, value: str | None) -> Any:
        """A span id as stored: bytes when hex (as the OTLP path stores them)."""
        if value is None:
            return None
        try:
            return bytes.fromhex(value)
        except ValueError:
            return value if self.text_ids else value.encode()


SQLITE = Dialect(
    name="sqlite",
    greatest="MAX",
    no_limit="LIMIT -1",
    queue_index="INDEXED BY rollouts_queue",
    skip_locked="",
    text_ids=True,
    shared=False,
    queue_back="(SELECT COALESCE(MAX(queue_seq), 0) + 1 FROM rollouts WHERE queue_seq IS NOT NULL)",
    view_key="span_rowid",
)
POSTGRESQL = Dialect(
    name="postgresql",
    greatest="GREATEST",
    no_limit="LIMIT ALL",
    queue_index="",
    skip_locked="FOR UPDATE SKIP LOCKED",
    text_ids=False,
    shared=True,
    queue_back="nextval('rollouts_queue_seq')",
    view_key="rollout_id, span_rowid",
)


def within(column: str, values: Sequence[Any], params: list[Any]) -> str:
    """``column IN (...)`` for ``values``, added to ``params``; false for none."""
    values = list(values)
    if not values:
        return "FALSE"
    params.extend(values)
    return f"{column} IN ({', '.join('?' * len(values))})"


def chunks(items: Sequence[Any], size: int = 500) -> Iterable[Sequence[Any]]:
    """``items`` in slices small enough for one statement's parameters."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
