"""Span records prepared while idle (``store.views``) read back exactly as records built when
read: after log records join, after spans move, and never from a stale or mismatched view."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from lightning_otlp.api.bodies import json_response, large_page_response
from lightning_otlp.receiver.decode import PROTOBUF
from lightning_otlp.receiver.pipeline import Pipeline
from lightning_otlp.receiver.route import RoutingConfig, route
from lightning_otlp.store import SQLiteStore, views
from lightning_otlp.store.base import StoreOptions
from lightning_otlp.store.lightning import Page
from lightning_otlp.store.migrations import SQLITE
from lightning_otlp.store.postgres import PostgresStore
from lightning_otlp.store.postgres_schema import POSTGRESQL
from lightning_otlp.store.records import SPAN_COLUMNS, resource_bodies, span_records
from lightning_otlp.store.sql_store import SQLStore

from .payloads import genai_request, make_request, make_span
from .span_views import (
    OTHER,
    any_pipeline,
    any_store,
    api_of,
    build_all,
    encoded_count,
    read_items,
    view_count,
)
from .test_affinity import AID, IDS, MS, RID, send
from .test_api import span
from .test_genai_logs import CASE
from .test_translate import load_case

__all__ = ["any_pipeline", "any_store"]  # fixtures the tests here take


def _prompts(items: list[dict[str, Any]]) -> list[Any]:
    return [
        s["attributes"].get("gen_ai.prompt.1.content")
        for s in items
        if s["name"] == "openai.chat.completion"
    ]


def test_prepared_records_read_as_records_built_at_read_time(
    any_pipeline: Pipeline, any_store: SQLStore
) -> None:
    pipeline, store = any_pipeline, any_store
    request = genai_request(40, ids=[(RID, AID), OTHER], content=True)
    request.resource_spans.extend(make_request([make_span("tool", attributes=IDS)]).resource_spans)
    pipeline.export_traces(request.SerializeToString(), None, PROTOBUF)
    api = api_of(store)
    api.add_span(span(RID, AID, 7, 1, name="added through the API"))
    before = {rid: read_items(api, rid, encoded=False) for rid in (RID, OTHER[0])}
    assert encoded_count(api, RID) == 0  # nothing prepared yet: every record built when read
    build_all(store)
    assert view_count(store) == 41  # every OTLP span; the API's span keeps its own record
    assert store.metrics()[0].value == 0
    assert encoded_count(api, RID) == 21
    queries: list[dict[str, Any]] = [
        {},
        {"sort_by": "sequence_id", "sort_order": "desc"},
        {"limit": 5, "offset": 3},
        {"sort_by": "name"},
        {"filters": {"name": {"exact": None, "contains": "chat"}}},
    ]
    for rid in (RID, OTHER[0]):
        assert read_items(api, rid, encoded=True) == before[rid]
        for query in queries:
            encoded, built = (read_items(api, rid, e, **dict(query)) for e in (True, False))
            assert encoded == built
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
        api = api_of(store)
        if prepared == "view":
            build_all(store)
            assert view_count(store) > 0
        (rollout_id,) = {r["rollout_id"] for r in store.rollouts()}
        without = read_items(api, rollout_id, encoded=True)
        if prepared != "view":
            assert len(api.read_cache) > 0  # type: ignore[attr-defined]
        pipeline.export_logs(logs.SerializeToString(), None, PROTOBUF)
        joined = read_items(api, rollout_id, encoded=True)
        assert joined == read_items(api, rollout_id, encoded=False)
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
    build_all(store)
    assert view_count(store) == 2
    marker = make_span(
        "agentlightning.rollout.start", trace_id=trace, attributes=IDS, start_ns=10 * MS
    )
    send(pipeline, [marker])
    build_all(store)
    api = api_of(store)
    items = read_items(api, RID, encoded=True, sort_by="sequence_id")
    assert [(s["name"], s["attempt_id"], s["sequence_id"]) for s in items] == [
        ("agentlightning.rollout.start", AID, 10_000),
        ("agent-0", AID, 20_000),
        ("agent-1", AID, 21_000),
    ]
    assert {s["rollout_id"] for s in items} == {RID}
    assert items == read_items(api, RID, encoded=False, sort_by="sequence_id")
    assert encoded_count(api, RID) == 3


def test_stale_or_mismatched_views_are_never_read(pipeline: Pipeline, store: SQLiteStore) -> None:
    pipeline.export_traces(genai_request(10, ids=[(RID, AID)]).SerializeToString(), None, PROTOBUF)
    api = api_of(store)
    truth = read_items(api, RID, encoded=False)
    build_all(store)
    with store.locked() as conn:
        conn.execute('UPDATE span_views SET body = CAST(\'{"name":"wrong"}\' AS BLOB)')
        conn.execute("UPDATE span_views SET version = version + 1 WHERE span_rowid % 2 = 0")
        conn.execute("UPDATE span_views SET span_id = x'0000000000000000' WHERE span_rowid % 2 = 1")
    assert encoded_count(api, RID) == 0
    assert read_items(api, RID, encoded=True) == truth
    store._views_at = 0  # a restart: the builder looks at every span again
    build_all(store)
    assert encoded_count(api, RID) == 10
    assert read_items(api, RID, encoded=True) == truth


def test_nothing_is_prepared_without_prepare_reads_or_translation() -> None:
    for options in (StoreOptions(prepare_reads=False), StoreOptions(translate=False)):
        store = SQLiteStore(":memory:", options)
        store.open()
        pipeline = Pipeline(store)
        try:
            pipeline.export_traces(genai_request(5).SerializeToString(), None, PROTOBUF)
            assert store.idle_work() is False
            assert view_count(store) == 0
            assert store.metrics()[0].value == 0
        finally:
            pipeline.close()
            store.close()


def test_a_large_page_is_sent_a_slice_at_a_time_as_one_call_would_encode_it() -> None:
    records: list[dict[str, Any] | bytes] = [{"n": i, "name": f"span {i}"} for i in range(1201)]
    records[7] = b'{"prepared":true}'
    whole = json_response(Page(list(records), -1, 0, 1201).as_dict()).body
    page = Page(records, -1, 0, 1201)
    status, headers, parts = _sent(page)
    body = b"".join(parts)
    assert status == 200 and body == whole
    assert int(headers[b"content-length"]) == len(body)
    assert headers[b"content-type"] == b"application/json"
    assert len(parts) == 5  # the head, three slices of records, the tail: never one buffer
    assert json.loads(body)["items"][7] == {"prepared": True}
    # Each slice's records are let go once encoded: a page is never held as records and parts.
    assert records == [None] * 1201
    records = [{"n": i} for i in range(1201)]
    records[1000] = {"past 64 bits": 2**70}  # the stdlib's encoding, record by record
    page = Page(records, -1, 0, 1201)
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
        api = api_of(store)
        for rid in (RID, OTHER[0]):
            assert encoded_count(api, rid) == 6
            assert read_items(api, rid, encoded=True) == read_items(api, rid, encoded=False)
    finally:
        store.close()
