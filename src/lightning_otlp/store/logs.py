"""GenAI log records in the store: rows from an OTLP logs request, and the join onto spans.

Only log records that are GenAI events and name a span are kept (``translate.is_genai_event``).
They are stored as received, keyed by (trace_id, span_id), whether or not the span has arrived
yet, and become events of their span's record when it is read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest as PB2ExportLogsServiceRequest,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord as PB2LogRecord

from ..translate import is_genai_event, log_event
from .dialect import Conn


class LogRow(NamedTuple):
    """One GenAI log record as stored, keyed by the span it belongs to."""

    trace_id: bytes
    span_id: bytes
    digest: bytes  # of ``record``: a retried record is stored once
    time: float | None
    record: bytes  # the OTLP LogRecord message as received


LogRows = list[LogRow]
_CHUNK: Final = 500


@dataclass(slots=True)
class LogBatch:
    """One logs request: the rows to keep, and how many records were not kept."""

    rows: LogRows = field(default_factory=list)
    received: int = 0
    rejected: int = 0


def log_rows(request: PB2ExportLogsServiceRequest) -> LogBatch:
    batch = LogBatch()
    for resource_logs in request.resource_logs:
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                batch.received += 1
                if not is_genai_event(record):
                    batch.rejected += 1
                    continue
                blob = record.SerializeToString()
                stamp = record.time_unix_nano or record.observed_time_unix_nano
                batch.rows.append(
                    LogRow(
                        record.trace_id,
                        record.span_id,
                        hashlib.blake2b(blob, digest_size=16).digest(),
                        stamp / 1e9 if stamp else None,
                        blob,
                    )
                )
    return batch


def span_events(conn: Conn, trace_id: bytes, span_id: bytes) -> list[dict[str, Any]]:
    """The stored GenAI log records of one span as span events, oldest first."""
    rows = conn.execute(
        "SELECT record FROM span_logs WHERE trace_id = ? AND span_id = ? ORDER BY time, rowid",
        (trace_id, span_id),
    ).fetchall()
    return [log_event(PB2LogRecord.FromString(blob)) for (blob,) in rows]


def joined_events(
    conn: Conn, trace_ids: Iterable[bytes]
) -> dict[tuple[bytes, bytes], list[dict[str, Any]]]:
    """The stored GenAI log records of these traces as span events, by (trace_id, span_id)."""
    out: dict[tuple[bytes, bytes], list[dict[str, Any]]] = {}
    ids = list(trace_ids)
    if not ids or not conn.execute("SELECT EXISTS (SELECT 1 FROM span_logs)").fetchone()[0]:
        return out  # most stores hold none: no lookup per trace
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        rows = conn.execute(
            "SELECT trace_id, span_id, record FROM span_logs"
            f" WHERE trace_id IN ({', '.join('?' * len(chunk))}) ORDER BY time, rowid",
            chunk,
        ).fetchall()
        for trace_id, span_id, blob in rows:
            event = log_event(PB2LogRecord.FromString(blob))
            out.setdefault((trace_id, span_id), []).append(event)
    return out
