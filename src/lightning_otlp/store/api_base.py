"""What every part of the LightningStore API over a SQL store shares: the storage primitives
a backend supplies (``SQLBackend``), one transaction per call (``retried``), and paging."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import wraps
from typing import Any, ParamSpec, Protocol, TypeVar

from .dialect import Conn
from .lightning import FilterLogic, Page, Query, Record

P = ParamSpec("P")
T = TypeVar("T")


class SQLBackend(Protocol):
    """The storage primitives the LightningStore API needs of a backend; the policy is the
    API's and ``store.lifecycle``'s, the same for all."""

    sequence_ids: str
    translate: bool

    def transaction(self) -> AbstractContextManager[Conn]:
        """A write transaction, committed when the block ends; a failing database becomes
        ``StoreUnavailable``, except a conflict ``retrying`` deals with."""
        ...

    def snapshot(self) -> AbstractContextManager[Conn]:
        """A read-only transaction beside the writer (one consistent view)."""
        ...

    def retrying(self, call: Callable[[], T]) -> T:
        """``call`` (one whole transaction), run again if the backend gave up on it because a
        concurrent transaction conflicted with it."""
        ...

    def claim(self, conn: Conn, work: str, every: float, now: float) -> bool:
        """Whether this process does ``work`` now: at most once per ``every`` seconds for all
        the processes sharing the store (decided in the caller's transaction)."""
        ...

    def reads_apart(self) -> bool:
        """Whether snapshots have connections of their own (not the writer's)."""
        ...

    def close_readers(self) -> None: ...


class HasBackend(Protocol):
    store: SQLBackend


def retried(method: Callable[P, T]) -> Callable[P, T]:
    """A public call as one transaction, run again whole if the backend asks."""

    @wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        owner: HasBackend = args[0]  # type: ignore[assignment]
        return owner.store.retrying(lambda: method(*args, **kwargs))

    return call


def _sort_value(record: Record, field: str) -> Any:
    """Upstream's sort key: missing ``*_time`` last, other missing values as ''/0."""
    value = record.get(field)
    if field.endswith("_time"):
        return float("inf") if value is None else value
    if value is None:
        return 0 if field in ("sequence_id", "version") else ""
    return value


def paginate(records: list[Record], query: Query) -> Page:
    return Page(page_of(records, query), query.limit, query.offset, len(records))


def page_of(records: list[Record], query: Query) -> list[Record]:
    if query.sort_by:
        key = query.sort_by
        records = sorted(
            records, key=lambda r: _sort_value(r, key), reverse=query.sort_order == "desc"
        )
    end = None if query.limit == -1 else query.offset + query.limit
    return records[query.offset : end]


def limit_sql(conn: Conn, query: Query) -> str:
    """The ``LIMIT``/``OFFSET`` of a page."""
    page = "" if query.limit == -1 else f" LIMIT {int(query.limit)}"
    if query.offset:
        page = (page or " " + conn.dialect.no_limit) + f" OFFSET {int(query.offset)}"
    return page


def combine(tests: list[str], logic: FilterLogic) -> str:
    """Conditions pooled as upstream pools them, ``and`` / ``or`` (NULL counts as false)."""
    return f" {'OR' if logic == 'or' else 'AND'} ".join(f"COALESCE({t}, FALSE)" for t in tests)
