"""The embedded store: acknowledged means committed, across kill -9; retries store nothing twice."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import pytest

from lightning_otlp.receiver.route import RoutingConfig, route
from lightning_otlp.store import SQLiteStore
from lightning_otlp.store.base import StoreOptions
from lightning_otlp.store.migrations import SQLITE, applied
from lightning_otlp.wiring import open_store

from .payloads import genai_request, make_request, make_span
from .support import ReceiverProcess

PB = {"content-type": "application/x-protobuf"}
TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


@pytest.mark.e2e
def test_kill_9_right_after_acknowledgement_loses_nothing(
    start_receiver: Callable[..., ReceiverProcess],
) -> None:
    receiver = start_receiver()
    requests = [genai_request(256, seed=1000 + i) for i in range(12)]
    bodies = [r.SerializeToString() for r in requests]
    expected = {
        (s.trace_id.hex(), s.span_id.hex())
        for r in requests
        for s in r.resource_spans[0].scope_spans[0].spans
    }
    with httpx.Client() as client, grpc.insecure_channel(receiver.grpc_target) as channel:
        export = channel.unary_unary(TRACES)
        for i, body in enumerate(bodies):
            if i % 2:
                export(body, timeout=30)
            else:
                assert client.post(receiver.traces_url, content=body, headers=PB).status_code == 200
    receiver.kill()  # SIGKILL straight after the last acknowledgement
    assert receiver.proc is not None and receiver.proc.returncode == -9

    restarted = start_receiver()  # same database file
    stored = restarted.spans()
    assert len(stored) == len(expected) == 12 * 256
    assert {(s["trace_id"], s["span_id"]) for s in stored} == expected

    # Clients retry what they are unsure of: the same requests again store nothing new.
    with httpx.Client() as client:
        for body in bodies[-3:]:
            assert client.post(restarted.traces_url, content=body, headers=PB).status_code == 200
    assert len(restarted.spans()) == len(expected)


def test_schema_is_created_once_and_migrations_recorded(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "store.db"
    for _ in range(2):
        store = SQLiteStore(str(path))
        store.open()
        assert store.ready()
        store.close()
    with sqlite3.connect(path) as conn:
        assert applied(conn) == [m.name for m in SQLITE]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_store_urls(tmp_path: Path) -> None:
    assert isinstance(open_store("memory://"), SQLiteStore)
    store = open_store(f"sqlite:///{tmp_path}/x.db?synchronous=normal")
    assert isinstance(store, SQLiteStore) and store.path == f"{tmp_path}/x.db"
    assert open_store("sqlite:///relative.db").path == "relative.db"  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        open_store("mysql://nowhere")
    with pytest.raises(ValueError):
        SQLiteStore("x.db", synchronous="SOMETIMES")


def test_an_attempt_counter_poisoned_on_disk_heals(tmp_path: Path) -> None:
    """A database written before sequence ids were bounded still takes that attempt's spans
    (those without a start time take their ids from the attempt's counter)."""
    from lightning_otlp.receiver.decode import PROTOBUF
    from lightning_otlp.receiver.pipeline import Pipeline

    from .payloads import make_request, make_span

    path = tmp_path / "poisoned.db"
    attrs = {"agentlightning.rollout_id": "ro-0123456789ab", "agentlightning.attempt_id": "at-1"}
    store = SQLiteStore(str(path))
    store.open()
    pipeline = Pipeline(store)
    try:
        pipeline.export_traces(
            make_request([make_span("first", attributes=attrs, start_ns=0)]).SerializeToString(),
            None,
            PROTOBUF,
        )
        with sqlite3.connect(path) as conn:  # what a 2^63-2 sequence id left behind
            conn.execute("UPDATE attempts SET next_span_seq = ?", (2**63 - 1,))
        for name in ("second", "third"):
            answer = pipeline.export_traces(
                make_request([make_span(name, attributes=attrs, start_ns=0)]).SerializeToString(),
                None,
                PROTOBUF,
            )
            assert answer.partial_success.rejected_spans == 0
        seq = {s["name"]: s["sequence_id"] for s in store.spans()}
    finally:
        pipeline.close()
        store.close()
    assert seq == {"first": 1, "second": 2, "third": 3}


def _filled(path: Path, rollouts: int = 20, spans: int = 100) -> None:
    from lightning_otlp.receiver.decode import PROTOBUF
    from lightning_otlp.receiver.pipeline import Pipeline

    from .payloads import genai_request

    store = SQLiteStore(str(path))
    store.open()
    pipeline = Pipeline(store)
    try:
        for i in range(rollouts):
            body = genai_request(spans, rollouts=1, seed=i).SerializeToString()
            pipeline.export_traces(body, None, PROTOBUF)
    finally:
        pipeline.close()
        store.close()


@pytest.mark.slow
def test_reading_all_spans_streams_one_rollout_at_a_time(tmp_path: Path) -> None:
    import tracemalloc

    path = tmp_path / "big.db"
    _filled(path)
    reader = SQLiteStore(str(path), StoreOptions(create=False))
    reader.open()
    try:
        tracemalloc.start()
        records = reader.spans()
        first = next(records)
        _, first_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        rest = list(records)
        _, all_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert len(rest) + 1 == 2000
        assert first_peak * 5 < all_peak  # the first record did not load every row
        assert [r["sequence_id"] for r in [first, *rest] if r["rollout_id"] == first["rollout_id"]]
        # While a reader is between rollouts, a checkpoint can empty the WAL.
        records = reader.spans()
        next(records)
        with sqlite3.connect(path) as conn:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0
        assert sum(1 for _ in records) == 1999
    finally:
        reader.close()


def test_the_wal_is_truncated_after_checkpoints(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "wal.db"))
    store.open()
    try:
        limit = store._connection().execute("PRAGMA journal_size_limit").fetchone()[0]
    finally:
        store.close()
    assert 0 < limit <= 64 * 1024 * 1024


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sqlite:/x.db", "sqlite:///x.db"),
        ("sqlite://./y.db", "sqlite:///./y.db"),
        ("sqlite:///x.db?synchronus=normal", "did you mean 'synchronus' -> 'synchronous'"),
        ("memory://?sync=off", "unknown option"),
    ],
)
def test_store_urls_are_strict_and_say_what_was_meant(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says.replace("?", r"\?")):
        open_store(url)


def test_an_api_write_takes_the_store_before_ingest_waiting_longer(tmp_path: Path) -> None:
    """Ingest's commits wait behind other writers (``db.WriterLock``): a LightningStore API
    call waits for the commit in progress, not for every request queued after it."""
    store = SQLiteStore(tmp_path / "s.db")
    store.open()
    order: list[str] = []
    batch = route(make_request([make_span("s")]), RoutingConfig())

    def ingest() -> None:
        store.write(batch)
        order.append("ingest")

    def api() -> None:
        with store.transaction():
            order.append("api")

    def queued(n: int) -> None:
        while store._lock.queued < n:
            time.sleep(0.001)

    with store.locked():  # the commit in progress
        first = threading.Thread(target=ingest)
        first.start()
        queued(1)
        second = threading.Thread(target=api)
        second.start()
        queued(2)
    first.join(10)
    second.join(10)
    assert order == ["api", "ingest"]
    assert len(list(store.spans(None, raw=True))) == 1
    store.close()
