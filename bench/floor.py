"""The machine's floor for durable ingest: span rows built beforehand, inserted into a store
file with the store's own schema and indexes (WAL, ``synchronous=FULL``), in transactions of
4,096 rows. No HTTP, no decoding, no routing, no prepared records: whatever a receiver does
per span comes on top of this, so no receiver on this machine and disk ingests faster.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from lightning_otlp.store import SQLiteStore
from lightning_otlp.store.records import SPAN_COLUMNS

_INSERT = f"INSERT INTO spans ({SPAN_COLUMNS}) VALUES ({', '.join('?' * 12)})"
_TRANSACTION = 4096
_ROLLOUT_SPANS = 512


@dataclass(frozen=True)
class Floor:
    rows_per_second: float
    cpu_us_per_row: float


def durable_insert_floor(spans: list[tuple[str, bytes]], rows: int = 200_000) -> Floor:
    """Insert ``rows`` rows made of ``spans`` (name, OTLP span bytes), fresh ids each."""
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        path = str(Path(tmp) / "floor.db")
        store = SQLiteStore(path)
        store.open()  # the store's own schema, migrations and indexes
        store.close()
        conn = sqlite3.connect(path, isolation_level=None)
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "cache_size=-65536"):
            conn.execute(f"PRAGMA {pragma}")
        batch = [
            (
                f"ro-{i // _ROLLOUT_SPANS}",
                "at-1",
                i,
                os.urandom(16),
                os.urandom(8),
                None,
                spans[i % len(spans)][0],
                1.0 + i,
                2.0 + i,
                "UNSET",
                spans[i % len(spans)][1],
                "resource",
            )
            for i in range(rows)
        ]
        started, cpu = time.perf_counter(), time.process_time()
        for first in range(0, rows, _TRANSACTION):
            conn.execute("BEGIN")
            conn.executemany(_INSERT, batch[first : first + _TRANSACTION])
            conn.execute("COMMIT")
        seconds = time.perf_counter() - started
        floor = Floor(rows / seconds, (time.process_time() - cpu) / rows * 1e6)
        conn.close()
        return floor


def spans_of(requests: list[bytes]) -> list[tuple[str, bytes]]:
    """(name, span bytes) of every span in OTLP/protobuf export requests."""
    out = []
    for body in requests:
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                out.extend((s.name, s.SerializeToString()) for s in scope_spans.spans)
    return out
