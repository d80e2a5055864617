"""Store rows to records that validate as agentlightning 0.3 ``AttemptedRollout`` and ``Span``."""

from __future__ import annotations

import json
from collections.abc import Container, Iterable, Sequence, Set
from typing import Any, Final

from opentelemetry.proto.trace.v1.trace_pb2 import Span as PB2Span

from ..otlp import events_list, links_list, parse_trace_state, span_attributes
from ..translate import translate
from ..translate.clock import call_end_ns
from ..translate.otlp import may_be_call
from .dialect import Conn, chunks

DEFAULT_ROLLOUT_CONFIG: Final[dict[str, Any]] = {
    "timeout_seconds": None,
    "unresponsive_seconds": None,
    "max_attempts": 1,
    "retry_condition": [],
}

ROLLOUT_COLUMNS: Final = (
    "rollout_id, input, start_time, end_time, mode, resources_id, status, config, metadata"
)
ATTEMPT_COLUMNS: Final = (
    "rollout_id, attempt_id, sequence_id, start_time, end_time, status, worker_id, "
    "last_heartbeat_time, metadata"
)
SPAN_COLUMNS: Final = (
    "rollout_id, attempt_id, sequence_id, trace_id, span_id, parent_id, name, start_time, "
    "end_time, status_code, span, resource_id"
)


def json_or_none(text: str | None) -> Any:
    """A JSON column's value; SQL NULL stays None."""
    return None if text is None else json.loads(text)


def attempt_record(row: Sequence[Any]) -> dict[str, Any]:
    return {
        "rollout_id": row[0],
        "attempt_id": row[1],
        "sequence_id": row[2],
        "start_time": row[3],
        "end_time": row[4],
        "status": row[5],
        "worker_id": row[6],
        "last_heartbeat_time": row[7],
        "metadata": json_or_none(row[8]),
    }


def rollout_record(row: Sequence[Any]) -> dict[str, Any]:
    """A ``rollouts`` row (``ROLLOUT_COLUMNS``) as an agentlightning ``Rollout`` dict."""
    return {
        "rollout_id": row[0],
        "input": json_or_none(row[1]),
        "start_time": row[2],
        "end_time": row[3],
        "mode": row[4],
        "resources_id": row[5],
        "status": row[6],
        "config": json_or_none(row[7]),
        "metadata": json_or_none(row[8]),
    }


def worker_record(row: Sequence[Any]) -> dict[str, Any]:
    return {
        "worker_id": row[0],
        "status": row[1],
        "heartbeat_stats": json_or_none(row[2]),
        "last_heartbeat_time": row[3],
        "last_dequeue_time": row[4],
        "last_busy_time": row[5],
        "last_idle_time": row[6],
        "current_rollout_id": row[7],
        "current_attempt_id": row[8],
    }


def resources_record(row: Sequence[Any]) -> dict[str, Any]:
    return {
        "resources_id": row[0],
        "resources": json_or_none(row[1]),
        "create_time": row[2],
        "update_time": row[3],
        "version": row[4],
    }


def attempted_rollout_record(rollout: Sequence[Any], attempt: Sequence[Any]) -> dict[str, Any]:
    record = rollout_record(rollout)
    record["config"] = record["config"] or dict(DEFAULT_ROLLOUT_CONFIG)
    record["attempt"] = attempt_record(attempt)
    return record


def span_record(row: Sequence[Any], resource: dict[str, Any], span: PB2Span) -> dict[str, Any]:
    """A stored span row (columns as ``SPAN_COLUMNS``, ``span`` its message decoded) as an
    agentlightning ``Span`` dict."""
    trace_id = row[3].hex()
    span_id = row[4].hex()
    parent_id = row[5].hex() if row[5] else None
    return {
        "rollout_id": row[0],
        "attempt_id": row[1],
        "sequence_id": row[2],
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_id": parent_id,
        "name": row[6],
        "status": {"status_code": row[9], "description": span.status.message or None},
        "attributes": span_attributes(row[10]),
        "events": events_list(span.events),
        "links": links_list(span.links),
        "start_time": row[7],
        "end_time": row[8],
        "context": {
            "trace_id": trace_id,
            "span_id": span_id,
            "is_remote": False,
            "trace_state": parse_trace_state(span.trace_state),
        },
        "parent": (
            {
                "trace_id": trace_id,
                "span_id": parent_id,
                "is_remote": bool(span.flags & 0x200),
                "trace_state": {},
            }
            if parent_id
            else None
        ),
        "resource": resource,
    }


def span_records(
    row: Any,
    resources: dict[str, Any],
    logs: dict[Any, list[dict[str, Any]]] | None,
    enclosing: Container[tuple[bytes, bytes]] = (),
) -> dict[str, Any]:
    """A spans row (``SPAN_COLUMNS``, then ``record``) as an agentlightning ``Span`` dict.

    A span added through the LightningStore API is its record as given; an OTLP span is built
    from its protobuf and, with ``logs`` (translating), joined with its GenAI log records and
    translated unless it is in ``enclosing`` (it has model-call children, ``mark_enclosing``).
    """
    if row[12] is not None:
        return given_record(row[12], row[:3])
    span = PB2Span.FromString(row[10])
    built = span_record(row[:12], resources[row[11]], span)
    if logs is None:
        return built
    key = (row[3], row[4])
    events = logs.get(key)
    if not events and not may_be_call(row[10]):
        return built
    out = _translated(built, events, key in enclosing)
    if out is not built and span.end_time_unix_nano:  # a model call
        out["end_time"] = call_end_ns(span.start_time_unix_nano, span.end_time_unix_nano) / 1e9
    return out


def given_record(text: str, ids: Sequence[Any]) -> dict[str, Any]:
    """A span added through the API: its record as given, under its current rollout, attempt
    and sequence id."""
    record: dict[str, Any] = json.loads(text)
    record["rollout_id"], record["attempt_id"], record["sequence_id"] = ids
    return record


def _translated(
    record: dict[str, Any], events: list[dict[str, Any]] | None, encloses_calls: bool
) -> dict[str, Any]:
    """A span record with its GenAI log records as events, translated (``translate``)."""
    if events:
        record["events"] = [*record["events"], *events]
    return translate(record, encloses_calls)


def resource_bodies(conn: Conn, ids: Iterable[str]) -> dict[str, Any]:
    """Resource records by id, for the span rows that name them."""
    wanted = tuple(ids)
    if not wanted:
        return {}
    marks = ", ".join("?" * len(wanted))
    found = conn.execute(
        f"SELECT resource_id, body FROM resources WHERE resource_id IN ({marks})", wanted
    )
    return {key: json.loads(body) for key, body in found}


# -- spans that enclose model calls, recorded as their children arrive ---------------------
#
# A span with model-call children is never a call itself (``translate.encloses_call``), whatever
# was written onto it. Its children may come in the same request or in any later one, before or
# after it, so the store keeps the fact beside the spans, keyed by the parent's (trace_id,
# span_id), and every reader (the store's own, the API's pages, its prepared views, the forwarder)
# looks it up for the spans it translates. A prepared view of a span so marked is never used: it
# was built before the mark, and such spans are built at read time, as few as there are steps.

_TRACE_CHUNK: Final = 500
# The migration that adds the table (an entry of ``store.migrations.INGEST``).
ENCLOSING_MIGRATION: Final = """
    CREATE TABLE span_encloses_calls (
        trace_id BLOB NOT NULL,
        span_id  BLOB NOT NULL,
        PRIMARY KEY (trace_id, span_id)
    ) WITHOUT ROWID
"""


def mark_enclosing(
    conn: Conn, rows: Iterable[tuple[Any, ...]], calls: Set[tuple[bytes, bytes]]
) -> None:
    """Mark the parents of the model calls among these span rows (``SPAN_COLUMNS``); ``calls``
    holds the (trace_id, span_id) of the model calls (``SpanBatch.calls``)."""
    if not calls:
        return
    parents = {(row[3], row[5]) for row in rows if row[5] and (row[3], row[4]) in calls}
    conn.executemany(
        "INSERT INTO span_encloses_calls (trace_id, span_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
        parents,
    )


def enclosing_spans(conn: Conn, trace_ids: Iterable[bytes]) -> set[tuple[bytes, bytes]]:
    """The (trace_id, span_id) of the spans of these traces that enclose model calls."""
    out: set[tuple[bytes, bytes]] = set()
    ids = list(set(trace_ids))
    for start in range(0, len(ids), _TRACE_CHUNK):
        chunk = ids[start : start + _TRACE_CHUNK]
        out.update(
            conn.execute(
                "SELECT trace_id, span_id FROM span_encloses_calls"
                f" WHERE trace_id IN ({', '.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
        )
    return out


def enclosing_rows(conn: Conn, rowids: Iterable[int]) -> set[tuple[bytes, bytes]]:
    """``enclosing_spans`` for spans given by rowid."""
    out: set[tuple[bytes, bytes]] = set()
    for chunk in chunks(list(rowids)):
        out.update(
            conn.execute(
                "SELECT s.trace_id, s.span_id FROM spans s JOIN span_encloses_calls e"
                " ON e.trace_id = s.trace_id AND e.span_id = s.span_id"
                f" WHERE s.rowid IN ({', '.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
        )
    return out
