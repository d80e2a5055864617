"""Span records prepared while idle (``store.views``) read back exactly as records built when
read: after log records join, after spans move, and never from a stale or mismatched view."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from lightning_otlp.api.bodies import json_response, large_page_response
from lightning_otlp.receiver.decode import PROTOBUF
from lightning_otlp.receiver.pipeline import Pipeline
from lightning_otlp.receiver.route import RoutingConfig, route
from lightning_otlp.store import SQLiteStore, sql_store, views
from lightning_otlp.store.api_store import SQLLightningStore
from lightning_otlp.store.base import StoreOptions
from lightning_otlp.store.lightning import LightningStoreBackend, Page, Query
from lightning_otlp.store.migrations import SQLITE
from lightning_otlp.store.postgres import PostgresStore
from lightning_otlp.store.postgres_schema import POSTGRESQL
from lightning_otlp.store.records import SPAN_COLUMNS, resource_bodies, span_records
from lightning_otlp.store.span_reads import ReadCache
from lightning_otlp.store.sql_store import SQLStore
from lightning_otlp.wiring import lightning_api, open_store

from .payloads import genai_request, make_request, make_span
from .test_affinity import AID, IDS, MS, RID, send
from .test_api import span
from .test_genai_logs import CASE
from .test_translate import load_case

OTHER = ("ro-00000000cafe", "at-0000cafe")


def _items(
    api: LightningStoreBackend, rollout_id: str, encoded: bool, **query: Any
) -> list[dict[str, Any]]:
    """A page as the API sends it, parsed back."""
    filters = query.pop("filters", {})
    page = api.query_spans(
        rollout_id, None, filters=filters, filter_logic="and", query=Query(**query), encoded=encoded
    )
    items: list[dict[str, Any]] = json.loads(json_response(page.as_dict()).body)["items"]
    return items


def _encoded_count(api: LightningStoreBackend, rollout_id: str) -> int:
    page = api.query_spans(
        rollout_id, None, filters={}, filter_logic="and", query=Query(), encoded=True
    )
    return sum(isinstance(item, bytes) for item in page.items)


def _prompts(items: list[dict[str, Any]]) -> list[Any]:
    return [
        s["attributes"].get("gen_ai.prompt.1.content")
        for s in items
        if s["name"] == "openai.chat.completion"
    ]


def _build_all(store: SQLiteStore) -> int:
    """Every view, as once ingest pauses (under ingest older spans wait their turn)."""
    store._written_at = float("-inf")
    steps = 0
    while store.idle_work():
        steps += 1
    return steps


def _views(store: SQLStore) -> int:
    with store.reader() as conn:
        return int(conn.execute("SELECT COUNT(*) FROM span_views").fetchone()[0])


def _api(store: SQLStore) -> LightningStoreBackend:
    api = lightning_api(store)  # type: ignore[arg-type]
    assert api is not None
    return api


def _prepared_only(store: SQLStore) -> LightningStoreBackend:
    """An API whose reads keep nothing they build: what a read sends encoded was prepared."""
    api = lightning_api(store)  # type: ignore[arg-type]
    assert isinstance(api, SQLLightningStore)
    api.read_cache = ReadCache(0)
    return api


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_store(request: pytest.FixtureRequest) -> Iterator[SQLStore]:
    """The embedded store and PostgreSQL: records are prepared the same way on both."""
    url = "memory://" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    store = open_store(url)
    store.open()
    yield store  # type: ignore[misc]
    store.close()


@pytest.fixture
def any_pipeline(any_store: SQLStore) -> Iterator[Pipeline]:
    pipeline = Pipeline(any_store, RoutingConfig())  # type: ignore[arg-type]
    yield pipeline
    pipeline.close()


def test_prepared_records_read_as_records_built_at_read_time(
    any_pipeline: Pipeline, any_store: SQLStore
) -> None:
    pipeline, store = any_pipeline, any_store
    request = genai_request(40, ids=[(RID, AID), OTHER], content=True)
    request.resource_spans.extend(make_request([make_span("tool", attributes=IDS)]).resource_spans)
    pipeline.export_traces(request.SerializeToString(), None, PROTOBUF)
    api = _api(store)
    api.add_span(span(RID, AID, 7, 1, name="added through the API"))
    before = {rid: _items(api, rid, encoded=False) for rid in (RID, OTHER[0])}
    assert _encoded_count(api, RID) == 0  # nothing prepared yet: every record built when read
    _build_all(store)
    assert _views(store) == 41  # every OTLP span; the API's span keeps its own record
    assert store.metrics()[0].value == 0
    assert _encoded_count(api, RID) == 21
    queries: list[dict[str, Any]] = [
        {},
        {"sort_by": "sequence_id", "sort_order": "desc"},
        {"limit": 5, "offset": 3},
        {"sort_by": "name"},
        {"filters": {"name": {"exact": None, "contains": "chat"}}},
    ]
    for rid in (RID, OTHER[0]):
        assert _items(api, rid, encoded=True) == before[rid]
        for query in queries:
            assert _items(api, rid, True, **dict(query)) == _items(api, rid, False, **dict(query))
    # Translated: the model calls read as Agent Lightning's, from views as from protobuf.
    calls = [s for s in before[RID] if s["name"] == "openai.chat.completion"]
    assert len(calls) == 20 and calls[0]["attributes"]["lightning_otlp.original_name"]


@pytest.mark.parametrize("prepared", ["view", "kept by a read"])
def test_log_records_arriving_after_the_view_still_join_their_span(
    any_store: SQLStore, prepared: str
) -> None:
    """Whether a span's record was prepared in the background or built by a read and kept
    (``store.span_reads``), log records arriving later join it."""
    store = any_store
    pipeline = Pipeline(store, RoutingConfig())  # type: ignore[arg-type]
    try:
        traces, logs = load_case(CASE)
        assert logs is not None
        pipeline.export_traces(traces.SerializeToString(), None, PROTOBUF)
        api = _api(store)
        if prepared == "view":
            _build_all(store)
            assert _views(store) > 0
        (rollout_id,) = {r["rollout_id"] for r in store.rollouts()}
        without = _items(api, rollout_id, encoded=True)
        if prepared != "view":
            assert len(api.read_cache) > 0  # type: ignore[attr-defined]
        pipeline.export_logs(logs.SerializeToString(), None, PROTOBUF)
        joined = _items(api, rollout_id, encoded=True)
        assert joined == _items(api, rollout_id, encoded=False)
        assert "What is the weather in Paris?" not in _prompts(without)
        assert "What is the weather in Paris?" in _prompts(joined)
    finally:
        pipeline.close()


def test_spans_that_move_read_with_their_new_ids(
    any_pipeline: Pipeline, any_store: SQLStore
) -> None:
    pipeline, store = any_pipeline, any_store
    trace = make_span("x").trace_id
    send(
        pipeline, [make_span(f"agent-{i}", trace_id=trace, start_ns=(20 + i) * MS) for i in (0, 1)]
    )
    _build_all(store)
    assert _views(store) == 2
    marker = make_span(
        "agentlightning.rollout.start", trace_id=trace, attributes=IDS, start_ns=10 * MS
    )
    send(pipeline, [marker])
    _build_all(store)
    api = _api(store)
    items = _items(api, RID, encoded=True, sort_by="sequence_id")
    assert [(s["name"], s["attempt_id"], s["sequence_id"]) for s in items] == [
        ("agentlightning.rollout.start", AID, 10_000),
        ("agent-0", AID, 20_000),
        ("agent-1", AID, 21_000),
    ]
    assert {s["rollout_id"] for s in items} == {RID}
    assert items == _items(api, RID, encoded=False, sort_by="sequence_id")
    assert _encoded_count(api, RID) == 3


def test_stale_or_mismatched_views_are_never_read(pipeline: Pipeline, store: SQLiteStore) -> None:
    pipeline.export_traces(genai_request(10, ids=[(RID, AID)]).SerializeToString(), None, PROTOBUF)
    api = _api(store)
    truth = _items(api, RID, encoded=False)
    _build_all(store)
    with store.locked() as conn:
        conn.execute('UPDATE span_views SET body = CAST(\'{"name":"wrong"}\' AS BLOB)')
        conn.execute("UPDATE span_views SET version = version + 1 WHERE span_rowid % 2 = 0")
        conn.execute("UPDATE span_views SET span_id = x'0000000000000000' WHERE span_rowid % 2 = 1")
    assert _encoded_count(api, RID) == 0
    assert _items(api, RID, encoded=True) == truth
    store._views_at = 0  # a restart: the builder looks at every span again
    _build_all(store)
    assert _encoded_count(api, RID) == 10
    assert _items(api, RID, encoded=True) == truth


def test_nothing_is_prepared_without_prepare_reads_or_translation() -> None:
    for options in (StoreOptions(prepare_reads=False), StoreOptions(translate=False)):
        store = SQLiteStore(":memory:", options)
        store.open()
        pipeline = Pipeline(store)
        try:
            pipeline.export_traces(genai_request(5).SerializeToString(), None, PROTOBUF)
            assert store.idle_work() is False
            assert _views(store) == 0
            assert store.metrics()[0].value == 0
        finally:
            pipeline.close()
            store.close()


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
    assert _views(store) == 300


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
            if _views(store) >= 300:
                break
        pipeline.draining = True
        await asyncio.wait_for(worker, 30)
        return sent

    sent = asyncio.run(run())
    assert _views(store) >= 300, f"nothing prepared during {sent} back-to-back requests"
    api = lightning_api(store)
    assert api is not None
    prepared = [rid for rid, _ in rollouts[:sent] if _encoded_count(api, rid) == 50]
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
    while _encoded_count(api, OTHER[0]) < 100:
        assert store.idle_work()
    assert _encoded_count(api, backlog[0][0]) == 0  # the oldest: still waiting
    behind = {m.name: m.value for m in store.metrics()}
    assert behind["lightning_otlp_span_views_newest_behind"] == 0  # the newest are done
    assert behind["lightning_otlp_span_views_behind"] > 0  # the backlog is not
    _build_all(store)
    assert all(_encoded_count(api, rid) == 500 for rid, _ in backlog)
    assert _views(store) == 5100
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
    before = _items(api, backlog[0][0], encoded=False)
    monkeypatch.setattr(sql_store, "BACKLOG_STEP_EVERY", 3600.0)  # no turn comes by itself
    store._backlog_at = time.monotonic()
    pipeline.export_traces(genai_request(300, ids=[OTHER]).SerializeToString(), None, PROTOBUF)
    steps = 0
    while store.idle_work():
        steps += 1
    assert steps > 0 and _encoded_count(api, OTHER[0]) == 300  # the newest: all prepared
    assert _views(store) == sql_store._VIEW_WINDOW  # the newest window, nothing older
    assert _encoded_count(api, backlog[0][0]) == 0  # the oldest wait
    assert store.idle_work() is False  # and no step is taken for them while ingesting
    monkeypatch.setattr(sql_store, "BACKLOG_STEP_EVERY", 0.0)  # a turn: one step
    store.idle_work()
    assert _encoded_count(api, backlog[0][0]) == sql_store._VIEW_BATCH
    monkeypatch.setattr(sql_store, "BACKLOG_STEP_EVERY", 3600.0)
    assert store.idle_work() is False  # the next turn is not yet
    store._written_at = float("-inf")  # ingest pauses: the backlog is prepared
    while store.idle_work():
        pass
    assert all(_encoded_count(api, rid) == 500 for rid, _ in backlog)
    assert _items(api, backlog[0][0], encoded=True) == before
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
        _build_all(store)
        assert _views(store) == 5
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
        _build_all(store)
        commit = statements.index("COMMIT")
        pragmas = [s for s in statements[:commit] if s.startswith("PRAGMA synchronous")]
        assert pragmas == [f"PRAGMA synchronous = {'OFF' if synchronous == 'OFF' else 'NORMAL'}"]
        with store.locked() as conn:
            conn.set_trace_callback(None)
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == level[synchronous]
        assert _views(store) == 6
    finally:
        pipeline.close()
        store.close()
    again = SQLiteStore(path)
    again.open()
    try:
        assert _views(again) == 6
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
        _build_all(again)
        assert again.metrics()[0].value == 0 and _views(again) == 4
    finally:
        again.close()


def counted_turns(monkeypatch: Any) -> list[int]:
    """Reads' turns (``views.READ_PACE``) counted, one entry each, none resting."""
    turns: list[int] = []

    class Counting(views.Pace):
        @contextmanager
        def turn(self) -> Iterator[None]:
            turns.append(1)
            with super().turn():
                yield

    monkeypatch.setattr(views, "READ_PACE", Counting(share=1.0))
    return turns


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
        api = _api(store)
        at_once = _items(api, RID, encoded=False)
        assert len(at_once) == 2 * views.BUILD_CHUNK + 30
        assert not turns  # on the store thread: never paced
        with api.reading():  # as on a read thread: its own read-only connection, paced
            assert _items(api, RID, encoded=False) == at_once
            assert len(turns) == 1 + 3  # the look-up, then a turn per chunk built
            store.idle_work()  # some views prepared: only the rest is built, still paced
            turns.clear()
            built = len(at_once) - _encoded_count(api, RID)
            assert 0 < built < len(at_once)
            assert len(turns) == 1 + -(-built // views.BUILD_CHUNK)
            turns.clear()
            assert _items(api, RID, encoded=True) == at_once
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


def test_a_large_page_is_sent_a_slice_at_a_time_as_one_call_would_encode_it() -> None:
    records: list[dict[str, Any] | bytes] = [{"n": i, "name": f"span {i}"} for i in range(1201)]
    records[7] = b'{"prepared":true}'
    page = Page(records, -1, 0, 1201)
    status, headers, parts = _sent(page)
    body = b"".join(parts)
    assert status == 200 and body == json_response(page.as_dict()).body
    assert int(headers[b"content-length"]) == len(body)
    assert headers[b"content-type"] == b"application/json"
    assert len(parts) == 5  # the head, three slices of records, the tail: never one buffer
    assert json.loads(body)["items"][7] == {"prepared": True}
    records[1000] = {"past 64 bits": 2**70}  # the stdlib's encoding, record by record
    assert json.loads(b"".join(_sent(page)[2]))["items"][1000] == {"past 64 bits": 2**70}


def _sent(page: Page) -> tuple[int, dict[bytes, bytes], list[bytes]]:
    """What ``large_page_response`` sends: the status, the headers and each body message."""
    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    async def respond() -> None:
        response = await large_page_response(page)
        await response({"type": "http", "method": "GET"}, _no_body, send)

    asyncio.run(respond())
    start, *bodies = messages
    assert [m.get("more_body", False) for m in bodies] == [True] * (len(bodies) - 1) + [False]
    return start["status"], dict(start["headers"]), [m["body"] for m in bodies]


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def _views_before_they_named_their_rollout(store: SQLStore) -> int:
    """Views as the store made them before ``span_views`` had a rollout: every span's, and one
    of a span no longer there; how many spans have one."""
    columns = ", ".join("s." + c.strip() for c in SPAN_COLUMNS.split(","))
    with store.transaction() as conn:
        rows = conn.execute(f"SELECT s.rowid, {columns}, s.record FROM spans s").fetchall()
        resources = resource_bodies(conn, {row[12] for row in rows})
        built = []
        for row in rows:
            record = span_records(row[1:], resources, {})
            for key in ("rollout_id", "attempt_id", "sequence_id"):
                del record[key]
            built.append((row[0], views.VERSION, row[5], views.encode(record)))
        built.append((10**9, views.VERSION, b"gone", b"{}"))
        conn.executemany(
            "INSERT INTO span_views (span_rowid, version, span_id, body) VALUES (?, ?, ?, ?)",
            built,
        )
    return len(rows)


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_views_made_before_they_named_their_rollout_are_kept_by_the_upgrade(
    request: pytest.FixtureRequest, backend: str, tmp_path: Any
) -> None:
    def made(old: bool) -> SQLStore:
        if backend == "sqlite":
            steps = [m for m in SQLITE if m.name != "span-views-rollout"] if old else SQLITE
            return SQLiteStore(str(tmp_path / "store.db"), migrations=steps)
        url = request.getfixturevalue("pg_url")
        return PostgresStore(url, migrations=POSTGRESQL[:2] if old else POSTGRESQL)

    store = made(old=True)
    store.open()
    try:
        store.write(route(genai_request(12, ids=[(RID, AID), OTHER]), RoutingConfig()))
        assert _views_before_they_named_their_rollout(store) == 12
    finally:
        store.close()
    store = made(old=False)
    store.open()
    try:
        with store.reader() as conn:
            keyed = conn.execute(
                "SELECT v.rollout_id = s.rollout_id FROM span_views v"
                " LEFT JOIN spans s ON s.rowid = v.span_rowid"
            ).fetchall()
            if backend == "postgresql":
                key = conn.execute(
                    "SELECT a.attname FROM pg_index i JOIN pg_attribute a"
                    " ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
                    " WHERE i.indrelid = 'span_views'::regclass AND i.indisprimary"
                ).fetchall()
                assert {name for (name,) in key} == {"rollout_id", "span_rowid"}
        assert [bool(same) for (same,) in keyed] == [True] * 12  # the orphan is gone
        api = _api(store)
        for rid in (RID, OTHER[0]):
            assert _encoded_count(api, rid) == 6
            assert _items(api, rid, encoded=True) == _items(api, rid, encoded=False)
    finally:
        store.close()
