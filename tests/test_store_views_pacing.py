"""When span records are prepared (``store.views``): while idle, between commits, the newest
first, never holding the store thread or its syncs; reads that build them take paced turns."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from lightning_otlp.receiver.decode import PROTOBUF
from lightning_otlp.receiver.pipeline import Pipeline
from lightning_otlp.receiver.route import RoutingConfig
from lightning_otlp.store import SQLiteStore, sql_store, views
from lightning_otlp.store.api_store import SQLLightningStore
from lightning_otlp.store.lightning import LightningStoreBackend
from lightning_otlp.store.span_reads import ReadCache
from lightning_otlp.store.sql_store import SQLStore
from lightning_otlp.wiring import lightning_api

from .payloads import genai_request
from .span_views import (
    OTHER,
    api_of,
    build_all,
    counted_turns,
    encoded_count,
    read_items,
    view_count,
)
from .test_affinity import AID, RID


def _prepared_only(store: SQLStore) -> LightningStoreBackend:
    """An API whose reads keep nothing they build: what a read sends encoded was prepared."""
    api = lightning_api(store)  # type: ignore[arg-type]
    assert isinstance(api, SQLLightningStore)
    api.read_cache = ReadCache(0)
    return api


def test_the_receiver_prepares_records_while_idle_and_stops_when_draining(
    pipeline: Pipeline, store: SQLiteStore
) -> None:
    async def run() -> None:
        worker = asyncio.ensure_future(pipeline.idle_work())
        request = genai_request(300, ids=[(RID, AID)]).SerializeToString()
        await pipeline.export("traces", request, None, PROTOBUF, "http")
        while store.metrics()[0].value:
            await asyncio.sleep(0.05)
        pipeline.draining = True
        await asyncio.wait_for(worker, 30)

    asyncio.run(run())
    assert view_count(store) == 300


def test_records_are_prepared_between_commits_under_sustained_ingest(
    pipeline: Pipeline, store: SQLiteStore
) -> None:
    """Requests that never leave the store a moment idle (one right after another) still let
    records be prepared, between their commits, and whole rollouts get read from them."""
    rollouts = [(f"ro-{seed:012x}", f"at-{seed:08x}") for seed in range(1, 2000)]

    async def run() -> int:
        worker = asyncio.ensure_future(pipeline.idle_work())
        sent = 0
        for seed, ids in enumerate(rollouts, 1):  # a request at a time, no pause between them
            request = genai_request(50, ids=[ids], seed=seed).SerializeToString()
            await pipeline.export("traces", request, None, PROTOBUF, "http")
            sent += 1
            if view_count(store) >= 300:
                break
        pipeline.draining = True
        await asyncio.wait_for(worker, 30)
        return sent

    sent = asyncio.run(run())
    assert view_count(store) >= 300, f"nothing prepared during {sent} back-to-back requests"
    api = lightning_api(store)
    assert api is not None
    prepared = [rid for rid, _ in rollouts[:sent] if encoded_count(api, rid) == 50]
    assert prepared  # at least one rollout read wholly from prepared records


def test_the_newest_spans_are_prepared_before_a_backlog(
    pipeline: Pipeline, store: SQLiteStore
) -> None:
    """Spans stored just now (the rollout a trainer reads next) are prepared before older
    ones still waiting, and the older ones follow."""
    backlog = [(f"ro-{r:012x}", f"at-{r:08x}") for r in range(10)]
    for r, ids in enumerate(backlog):
        pipeline.export_traces(
            genai_request(500, ids=[ids], seed=r).SerializeToString(), None, PROTOBUF
        )
    pipeline.export_traces(genai_request(100, ids=[OTHER]).SerializeToString(), None, PROTOBUF)
    api = _prepared_only(store)
    newest = {m.name: m.value for m in store.metrics()}["lightning_otlp_span_views_newest_behind"]
    assert newest == 5100  # nothing prepared: every span waits
    while encoded_count(api, OTHER[0]) < 100:
        assert store.idle_work()
    assert encoded_count(api, backlog[0][0]) == 0  # the oldest: still waiting
    behind = {m.name: m.value for m in store.metrics()}
    assert behind["lightning_otlp_span_views_newest_behind"] == 0  # the newest are done
    assert behind["lightning_otlp_span_views_behind"] > 0  # the backlog is not
    build_all(store)
    assert all(encoded_count(api, rid) == 500 for rid, _ in backlog)
    assert view_count(store) == 5100
    assert store.metrics()[0].value == 0


def test_under_ingest_the_newest_keep_up_and_a_backlog_takes_its_turns(
    pipeline: Pipeline, store: SQLiteStore, monkeypatch: Any
) -> None:
    """While spans are being committed, the newest are prepared step after step; older ones
    wait for their turn (one step per ``BACKLOG_STEP_EVERY``) and all follow once ingest
    pauses. Reads are the same whichever way a record came."""
    backlog = [(f"ro-{r:012x}", f"at-{r:08x}") for r in range(10)]
    for r, ids in enumerate(backlog):
        request = genai_request(500, ids=[ids], seed=r).SerializeToString()
        pipeline.export_traces(request, None, PROTOBUF)
    api = _prepared_only(store)
    before = read_items(api, backlog[0][0], encoded=False)
    monkeypatch.setattr(sql_store, "BACKLOG_STEP_EVERY", 3600.0)  # no turn comes by itself
    store._backlog_at = time.monotonic()
    pipeline.export_traces(genai_request(300, ids=[OTHER]).SerializeToString(), None, PROTOBUF)
    steps = 0
    while store.idle_work():
        steps += 1
    assert steps > 0 and encoded_count(api, OTHER[0]) == 300  # the newest: all prepared
    assert view_count(store) == sql_store._VIEW_WINDOW  # the newest window, nothing older
    assert encoded_count(api, backlog[0][0]) == 0  # the oldest wait
    assert store.idle_work() is False  # and no step is taken for them while ingesting
    monkeypatch.setattr(sql_store, "BACKLOG_STEP_EVERY", 0.0)  # a turn: one step
    store.idle_work()
    assert encoded_count(api, backlog[0][0]) == sql_store._VIEW_BATCH
    monkeypatch.setattr(sql_store, "BACKLOG_STEP_EVERY", 3600.0)
    assert store.idle_work() is False  # the next turn is not yet
    store._written_at = float("-inf")  # ingest pauses: the backlog is prepared
    while store.idle_work():
        pass
    assert all(encoded_count(api, rid) == 500 for rid, _ in backlog)
    assert read_items(api, backlog[0][0], encoded=True) == before
    assert store.metrics()[0].value == 0


def test_a_busy_file_delays_preparing_and_never_holds_the_store_thread(tmp_path: Any) -> None:
    """Another writer holding the file: the idle step gives up at once and tries again later
    (requests would otherwise wait behind it for the whole busy timeout)."""
    import sqlite3
    import time

    store = SQLiteStore(str(tmp_path / "busy.db"), busy_timeout=30.0)
    store.open()
    pipeline = Pipeline(store)
    other = sqlite3.connect(tmp_path / "busy.db", isolation_level=None)
    try:
        pipeline.export_traces(genai_request(5).SerializeToString(), None, PROTOBUF)
        other.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        assert store.idle_work() is False
        assert time.monotonic() - started < 30.0  # not the 30 s busy timeout
        other.execute("ROLLBACK")
        assert store.prepare_reads
        build_all(store)
        assert view_count(store) == 5
    finally:
        other.close()
        pipeline.close()
        store.close()


@pytest.mark.parametrize("synchronous", ["FULL", "OFF"])
def test_views_commit_without_a_sync_and_requests_still_with_theirs(
    tmp_path: Any, synchronous: str
) -> None:
    """Views are a cache: their commit does not wait for the disk (never more synced than the
    store is), and the next request commits as synced as ever. Views survive a reopen."""
    path = str(tmp_path / "sync.db")
    store = SQLiteStore(path, synchronous=synchronous)
    store.open()
    pipeline = Pipeline(store)
    statements: list[str] = []
    level = {"OFF": 0, "NORMAL": 1, "FULL": 2}
    try:
        pipeline.export_traces(genai_request(6).SerializeToString(), None, PROTOBUF)
        with store.locked() as conn:
            conn.set_trace_callback(statements.append)
        build_all(store)
        commit = statements.index("COMMIT")
        pragmas = [s for s in statements[:commit] if s.startswith("PRAGMA synchronous")]
        assert pragmas == [f"PRAGMA synchronous = {'OFF' if synchronous == 'OFF' else 'NORMAL'}"]
        with store.locked() as conn:
            conn.set_trace_callback(None)
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == level[synchronous]
        assert view_count(store) == 6
    finally:
        pipeline.close()
        store.close()
    again = SQLiteStore(path)
    again.open()
    try:
        assert view_count(again) == 6
    finally:
        again.close()


def test_a_reopened_store_reports_its_spans_as_not_yet_prepared(tmp_path: Any) -> None:
    """After a restart the background step starts over (cheaply, over spans already built):
    until it has, ``lightning_otlp_span_views_behind`` must not claim it is done."""
    path = str(tmp_path / "reopen.db")
    store = SQLiteStore(path)
    store.open()
    pipeline = Pipeline(store)
    pipeline.export_traces(genai_request(4).SerializeToString(), None, PROTOBUF)
    pipeline.close()
    store.close()
    again = SQLiteStore(path)
    again.open()
    try:
        assert again.metrics()[0].value == 4
        build_all(again)
        assert again.metrics()[0].value == 0 and view_count(again) == 4
    finally:
        again.close()


def test_a_whole_rollout_read_on_a_read_thread_is_built_in_paced_turns(
    tmp_path: Any, monkeypatch: Any
) -> None:
    """Paced building (``store.views``) reads exactly what building at once reads, views and
    built records mixed, one turn per chunk; the store thread never takes a turn."""
    store = SQLiteStore(str(tmp_path / "paced.db"), synchronous="OFF")
    store.open()
    pipeline = Pipeline(store, RoutingConfig())
    turns = counted_turns(monkeypatch)
    try:
        request = genai_request(2 * views.BUILD_CHUNK + 30, ids=[(RID, AID)], content=True)
        pipeline.export_traces(request.SerializeToString(), None, PROTOBUF)
        api = api_of(store)
        at_once = read_items(api, RID, encoded=False)
        assert len(at_once) == 2 * views.BUILD_CHUNK + 30
        assert not turns  # on the store thread: never paced
        with api.reading():  # as on a read thread: its own read-only connection, paced
            assert read_items(api, RID, encoded=False) == at_once
            assert len(turns) == 1 + 3  # the look-up, then a turn per chunk built
            store.idle_work()  # some views prepared: only the rest is built, still paced
            turns.clear()
            built = len(at_once) - encoded_count(api, RID)
            assert 0 < built < len(at_once)
            assert len(turns) == 1 + -(-built // views.BUILD_CHUNK)
            turns.clear()
            assert read_items(api, RID, encoded=True) == at_once
            assert len(turns) == 1  # what was built is kept (``store.span_reads``): looked up
    finally:
        api.close_readers()
        pipeline.close()
        store.close()


def test_reads_give_way_only_while_spans_are_being_committed(
    tmp_path: Any, monkeypatch: Any
) -> None:
    """A building turn earns a rest (a multiple of its CPU time), taken before the next turn and
    only within ``INGEST_SECONDS`` of a commit: with nothing to give way to, a whole-rollout read
    goes at full speed, and a read of one turn is never held back by its own rest."""
    rests: list[float] = []
    monkeypatch.setattr(views.time, "sleep", rests.append)
    pace = views.Pace(share=0.1)
    monkeypatch.setattr(views, "READ_PACE", pace)

    def build() -> None:
        with pace.turn():
            sum(i * i for i in range(50_000))

    build()
    assert rests == []  # nothing committed yet
    store = SQLiteStore(str(tmp_path / "pace.db"), synchronous="OFF")
    store.open()
    pipeline = Pipeline(store, RoutingConfig())
    try:
        pipeline.export_traces(genai_request(4).SerializeToString(), None, PROTOBUF)
    finally:
        pipeline.close()
        store.close()
    build()
    assert rests == []  # a first turn is answered at once
    build()
    assert len(rests) == 1 and rests[0] > 0  # the next waits out nine times its CPU time
