"""The LightningStore API's span calls over any SQL store: spans added through the API (kept
as given, JSON) beside OTLP spans (kept as received, protobuf), read back as agentlightning
``Span`` records, model calls translated, kept from an earlier read or prepared where they
can be (``store.span_reads``).

With start-time sequence ids, ``spans/next`` issues at least the current time in microseconds,
the sequence ids the OTLP path gives spans from their start times.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Final, cast

from . import lifecycle as life
from . import views
from .api_base import SQLBackend, combine, limit_sql, page_of, paginate, retried
from .api_schema import API_RESOURCE_ID
from .dialect import Conn
from .lightning import FilterLogic, NotFound, Page, Query, Record, SpanOrder
from .records import SPAN_COLUMNS
from .sequence import free_sequence_ids, taken_sent
from .span_reads import ReadCache, span_items, span_rows

_LIGHT_SPAN_FIELDS: Final = frozenset(
    ("rollout_id", "attempt_id", "sequence_id", "trace_id", "span_id", "parent_id", "name")
    + ("start_time", "end_time")
)
# What a read needs of a span first: where it is and whether it was added through the API (its
# record kept as given); then its view, or, without one, the whole row.
_SPAN_LEAD: Final = (
    "s.rowid, s.rollout_id, s.attempt_id, s.sequence_id, s.trace_id, s.span_id, s.record"
)
_INSERT_API_SPAN: Final = (
    f"INSERT INTO spans ({SPAN_COLUMNS}, record) VALUES ({', '.join('?' * 13)})"
    " ON CONFLICT DO NOTHING"
)


class SpansAPI:
    """The span calls; the rest of the API (``store.api_store``) supplies its transactions."""

    store: SQLBackend
    clock: Callable[[], float]
    read_cache: ReadCache  # records built at read time, kept for the next read

    def _reading(self) -> bool:
        raise NotImplementedError

    def _transaction(self) -> AbstractContextManager[Conn]:
        raise NotImplementedError

    def _watched(self, *rollout_ids: str, everything: bool = False) -> AbstractContextManager[Conn]:
        raise NotImplementedError

    @retried
    def add_span(self, span: Record) -> Record | None:
        rollout_id = span["rollout_id"]
        attempt_id = span["attempt_id"]
        sequence_id = int(span["sequence_id"])
        with self._transaction() as conn:
            now = self.clock()
            life.raise_counter(conn, rollout_id, attempt_id, sequence_id + 1)
            # The check and the insert are sent together and answered in one round trip; a
            # span of an unknown rollout or attempt goes with the call's rollback.
            known = life.found_sent(conn, rollout_id, attempt_id)
            status = span.get("status") or {}
            cursor = conn.execute(
                _INSERT_API_SPAN,
                (
                    rollout_id,
                    attempt_id,
                    sequence_id,
                    conn.dialect.id_key(span.get("trace_id")),
                    conn.dialect.id_key(span.get("span_id")),
                    conn.dialect.id_key(span.get("parent_id")),
                    span.get("name", ""),
                    span.get("start_time"),
                    span.get("end_time"),
                    status.get("status_code", "UNSET"),
                    b"",
                    API_RESOURCE_ID,
                    json.dumps(span),
                ),
            )
            inserted = cursor.rowcount == 1  # read first: the check's answer came with it
            has_rollout, has_attempt = known.fetchone()
            if not has_rollout:
                raise NotFound(f"Rollout {rollout_id} not found")
            if not has_attempt:
                raise NotFound(f"Attempt {attempt_id} not found for rollout {rollout_id}")
            if not inserted:
                return None  # a duplicate: upstream logs it and returns None
            life.heartbeat(conn, rollout_id, attempt_id, now)
            return span

    @retried
    def next_span_sequence_id(self, rollout_id: str, attempt_id: str) -> int:
        """The rollout's counter; with start-time sequence ids, now in microseconds if later
        (OTLP spans get their start, so spans asked for here, the LLM proxy's, sort among them
        by time whatever order they arrive in), kept as issued so no OTLP span takes it."""
        with self._transaction() as conn:
            if self.store.sequence_ids != "start-time":
                value = life.rollout_counter(conn, rollout_id)
            elif conn.dialect.shared:
                # Every id the attempt holds is below its counter, and so below the rollout's
                # (``store.sequence``): from there up nothing is taken, and nothing is looked
                # up. A serializable read of the taken ids would mark the spans' and issued
                # ids' index pages read, which other rollouts' calls write to at once.
                now = int(self.clock() * 1e6)
                value = max(now, life.rollout_counter(conn, rollout_id))
                conn.execute(
                    "INSERT INTO span_issued (rollout_id, attempt_id, sequence_id)"
                    " VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                    (rollout_id, attempt_id, value),
                )
            else:
                # The counter and the ids taken at now sent together, one round trip: the
                # counter is seldom ahead of now (then what is taken from it is looked up).
                now = int(self.clock() * 1e6)
                counter = life.rollout_counter_sent(conn, rollout_id)
                probe = taken_sent(conn, rollout_id, attempt_id, now, now + 1)
                value = int(counter.fetchone()[0])
                taken = {row[0] for row in probe}
                if value <= now:
                    found = free_sequence_ids(
                        conn, rollout_id, attempt_id, [now], taken, looked_up=now + 1
                    )
                else:
                    found = free_sequence_ids(conn, rollout_id, attempt_id, [value])
                value = found[0]
                conn.execute(
                    "INSERT INTO span_issued (rollout_id, attempt_id, sequence_id)"
                    " VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                    (rollout_id, attempt_id, value),
                )
            life.raise_counter(conn, rollout_id, attempt_id, value + 1)
            return value

    @retried
    def query_spans(
        self,
        rollout_id: str,
        attempt_id: str | None,
        *,
        filters: dict[str, dict[str, str]],
        filter_logic: FilterLogic,
        query: Query,
        encoded: bool = False,
    ) -> Page:
        with self._watched(rollout_id) as conn:
            if attempt_id == "latest":
                latest = life.latest_attempt(conn, rollout_id)
                if latest is None:
                    return Page([], query.limit, query.offset, 0)
                attempt_id = latest["attempt_id"]
            sql = (
                "SELECT rowid, attempt_id, sequence_id, trace_id, span_id, parent_id, name,"
                " start_time, end_time FROM spans WHERE rollout_id = ?"
            )
            params: list[Any] = [rollout_id]
            if attempt_id is not None:
                sql += " AND attempt_id = ?"
                params.append(attempt_id)
            values: list[Any] = []
            tests = _span_tests(conn, filters, values)
            if query.sort_by in (None, "sequence_id") and not tests:
                return self._spans_by_sequence(conn, params, query, encoded)
            if tests:  # SQLite filters: only the matching spans are read and built
                sql += f" AND ({combine(tests, filter_logic)})"
                params.extend(values)
            light = [
                {
                    "rowid": r[0],
                    "rollout_id": rollout_id,
                    "attempt_id": r[1],
                    "sequence_id": r[2],
                    "trace_id": _id_text(r[3]),
                    "span_id": _id_text(r[4]),
                    "parent_id": _id_text(r[5]),
                    "name": r[6],
                    "start_time": r[7],
                    "end_time": r[8],
                }
                for r in conn.execute(sql + " ORDER BY rowid", params)
            ]
            if query.sort_by and query.sort_by not in _LIGHT_SPAN_FIELDS:
                # Sorting on a field only the full record has: decode everything first.
                rowids = [r["rowid"] for r in light]
                full = cast(list[Record], self._decode_spans(conn, rowids, False))
                return paginate(full, query)
            page = page_of(light, query)
            items = self._decode_spans(conn, [r["rowid"] for r in page], encoded)
        return Page(items, query.limit, query.offset, len(light))

    def _spans_by_sequence(
        self, conn: Conn, params: list[Any], query: Query, encoded: bool
    ) -> Page:
        """The common query (one rollout or attempt, in sequence order), paged by SQLite."""
        where = "s.rollout_id = ?" + (" AND s.attempt_id = ?" if len(params) > 1 else "")
        order = _order(query)
        page = limit_sql(conn, query)
        # Both sent before either is read: a server answers them in one round trip.
        counted = conn.execute(f"SELECT COUNT(*) FROM spans s WHERE {where}", params)
        found = conn.execute(
            f"SELECT {_SPAN_LEAD} FROM spans s WHERE {where} ORDER BY {order}{page}",
            params,
        )
        # A page of spans added through the API needs nothing more: one round trip in all.
        conn.reads_sent()
        total = int(counted.fetchone()[0])
        leads = found.fetchall()
        return Page(self._records(conn, leads, encoded), query.limit, query.offset, total)

    @retried
    def span_order(
        self, rollout_id: str, attempt_id: str | None, query: Query, first: int
    ) -> SpanOrder:
        with self._watched(rollout_id) as conn:
            if attempt_id == "latest":
                latest = life.latest_attempt(conn, rollout_id)
                if latest is None:
                    return SpanOrder([], (), 0)
                attempt_id = latest["attempt_id"]
            where = "s.rollout_id = ?"
            params: list[Any] = [rollout_id]
            if attempt_id is not None:
                where += " AND s.attempt_id = ?"
                params.append(attempt_id)
            found = conn.execute(
                f"SELECT s.rowid FROM spans s WHERE {where} ORDER BY {_order(query)}", params
            )
            # Eight bytes a span, taken a row at a time: never a list of a whole rollout's rows.
            rowids = array("q", (row[0] for row in found))
            start = query.offset
            records = self._spans_at(conn, rowids[start : start + first], views.BUILD_SHARE)
        return SpanOrder(records, rowids[start + first :], len(rowids))

    @retried
    def spans_at(self, rowids: Sequence[int]) -> list[Record | bytes]:
        with self._transaction() as conn:
            return self._spans_at(conn, rowids, views.SLICE_SHARE)

    def _spans_at(self, conn: Conn, rowids: Sequence[int], share: float) -> list[Record | bytes]:
        with views.READ_PACE.turn(share) if self._reading() else nullcontext():
            leads = span_rows(conn, _SPAN_LEAD, list(rowids))
        # A span gone since its place was read (its rollout deleted) is left out.
        return self._records(conn, [leads[r] for r in rowids if r in leads], True, share)

    def _records(
        self, conn: Conn, leads: list[Any], encoded: bool, share: float = views.BUILD_SHARE
    ) -> list[Record | bytes]:
        """Spans (rows of ``_SPAN_LEAD``) as agentlightning ``Span`` dicts, model calls
        translated as the store's own reader gives them (``lightning-otlp spans``); with
        ``encoded``, a span kept from an earlier read or prepared is its JSON, ready to send
        (``store.span_reads``). On a read thread the read is paced to ``share``: a read of a
        whole rollout cannot take the interpreter from ingest. The store thread never waits."""
        return span_items(
            conn,
            leads,
            encoded=encoded,
            translate=self.store.translate,
            cache=self.read_cache,
            share=share if self._reading() else None,
        )

    def _decode_spans(self, conn: Conn, rowids: list[int], encoded: bool) -> list[Record | bytes]:
        leads = span_rows(conn, _SPAN_LEAD, rowids)
        return self._records(conn, [leads[rowid] for rowid in rowids], encoded)


def _order(query: Query) -> str:
    """Arrival order, or sequence order with ``sort_by`` (ties in arrival order, as upstream's
    stable sort keeps them)."""
    if not query.sort_by:
        return "s.rowid"
    return "s.sequence_id DESC, s.rowid" if query.sort_order == "desc" else "s.sequence_id, s.rowid"


def _id_text(value: Any) -> str | None:
    if value is None:
        return None
    return value.hex() if isinstance(value, bytes) else str(value)


def _span_tests(conn: Conn, filters: dict[str, dict[str, str]], params: list[Any]) -> list[str]:
    """Upstream's span filters (exact and contains per field) as SQL conditions; their
    values are added to ``params``."""
    tests: list[str] = []
    dialect = conn.dialect
    for field, ops in filters.items():
        column = field if field == "name" else dialect.id_text(field)
        for op, expected in ops.items():
            if expected is None:
                continue
            tests.append(f"{column} = ?" if op == "exact" else dialect.contains(column))
            params.append(expected)
    return tests
