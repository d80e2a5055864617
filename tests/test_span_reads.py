"""Records built at read time are kept (``store.span_reads``): a repeated read of the same spans
builds none of them again, reads exactly what building reads, and a read larger than the cache
still finds the part that fits each time."""

from __future__ import annotations

from typing import Any

import pytest

from lightning_otlp.receiver.decode import PROTOBUF
from lightning_otlp.receiver.pipeline import Pipeline
from lightning_otlp.receiver.route import RoutingConfig
from lightning_otlp.store import SQLiteStore, span_reads
from lightning_otlp.store.span_reads import ReadCache
from lightning_otlp.store.sql_store import SQLStore

from .payloads import genai_request
from .span_views import any_pipeline, any_store, api_of, counted_turns, read_items
from .test_affinity import AID, RID

__all__ = ["any_pipeline", "any_store"]  # fixtures shared with the views' tests


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per span record built at read time."""
    calls: list[int] = []
    build = span_reads.span_records

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return build(*args, **kwargs)

    monkeypatch.setattr(span_reads, "span_records", counting)
    return calls


def _key(n: int) -> tuple[int, bytes, bytes]:
    return (n, b"t", n.to_bytes(8, "big"))


def test_a_repeated_read_builds_nothing_and_reads_the_same(
    any_pipeline: Pipeline, any_store: SQLStore, built: list[int]
) -> None:
    any_pipeline.export_traces(
        genai_request(30, ids=[(RID, AID)], content=True).SerializeToString(), None, PROTOBUF
    )
    api = api_of(any_store)
    truth = read_items(api, RID, encoded=False)
    assert len(built) == 30
    built.clear()
    assert read_items(api, RID, encoded=True) == truth
    assert len(built) == 30  # first read as the API reads: built, and kept
    built.clear()
    assert read_items(api, RID, encoded=True) == truth
    assert read_items(api, RID, encoded=True, limit=7, offset=5) == truth[5:12]
    assert built == []
    any_pipeline.export_traces(
        genai_request(4, ids=[(RID, AID)]).SerializeToString(), None, PROTOBUF
    )
    grown = read_items(api, RID, encoded=True)
    assert len(built) == 4  # only the new spans
    assert grown == read_items(api, RID, encoded=False)


def test_a_read_larger_than_the_cache_finds_the_part_that_fits_each_time(
    any_pipeline: Pipeline, any_store: SQLStore, built: list[int]
) -> None:
    any_pipeline.export_traces(
        genai_request(50, ids=[(RID, AID)]).SerializeToString(), None, PROTOBUF
    )
    api = api_of(any_store)
    truth = read_items(api, RID, encoded=True)
    size = api.read_cache.used // 50  # type: ignore[attr-defined]
    api.read_cache = ReadCache(20 * size)  # type: ignore[attr-defined]
    counts = []
    for _ in range(3):
        built.clear()
        assert read_items(api, RID, encoded=True) == truth
        counts.append(len(built))
    kept = len(api.read_cache)  # type: ignore[attr-defined]
    assert 15 < kept < 25
    assert counts == [50, 50 - kept, 50 - kept]  # the first read fills it, later ones find it


def test_the_cache_is_bounded_by_bytes_and_drops_the_least_recently_used() -> None:
    cache = ReadCache(3 * (100 + 150))
    cache.put([(_key(n), bytes(100)) for n in range(3)], cache.read())
    assert cache.get([_key(0)], cache.read()) == {_key(0): bytes(100)}  # now the newest
    cache.put([(_key(3), bytes(100))], cache.read())
    assert cache.used <= cache.limit and len(cache) == 3
    assert set(cache.get([_key(n) for n in range(4)], cache.read())) == {_key(0), _key(2), _key(3)}
    cache.put([(_key(9), bytes(10_000))], cache.read())  # larger than the whole cache: not kept
    assert len(cache) == 3
    with pytest.raises(ValueError):
        ReadCache(-1)


def test_a_read_never_evicts_its_own_entries() -> None:
    cache = ReadCache(2 * (100 + 150))
    mark = cache.read()
    cache.put([(_key(n), bytes(100)) for n in range(5)], mark)
    assert set(cache.get([_key(n) for n in range(5)], cache.read())) == {_key(0), _key(1)}


def test_a_whole_rollout_read_on_a_read_thread_looks_up_a_part_a_turn(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, built: list[int]
) -> None:
    """Records kept cost no building, but a whole rollout's look-ups still go in paced turns,
    one a part: a client reading it back to back cannot take the interpreter from ingest."""
    turns = counted_turns(monkeypatch)
    monkeypatch.setattr(span_reads, "READ_PART", 40)
    store = SQLiteStore(str(tmp_path / "parts.db"), synchronous="OFF")
    store.open()
    pipeline = Pipeline(store, RoutingConfig())
    api = api_of(store)
    try:
        request = genai_request(130, ids=[(RID, AID)])
        pipeline.export_traces(request.SerializeToString(), None, PROTOBUF)
        truth = read_items(api, RID, encoded=False)
        with api.reading():  # as on a read thread: paced
            turns.clear()
            assert read_items(api, RID, encoded=True) == truth
            assert len(turns) == 4 + 4  # each part looked up, then built in one chunk
            turns.clear()
            built.clear()
            assert read_items(api, RID, encoded=True) == truth
            assert (len(turns), built) == (4, [])  # kept: looked up only, still a part a turn
    finally:
        api.close_readers()  # type: ignore[attr-defined]
        pipeline.close()
        store.close()


def test_a_read_on_a_read_thread_reads_what_the_store_thread_reads(
    any_pipeline: Pipeline, any_store: SQLStore
) -> None:
    """On a read thread a page is read in a read-only snapshot, which on PostgreSQL ends with
    the page's first reads (one round trip); model calls then need their log records, the
    spans that enclose calls and their rows read after it: the records are the same."""
    any_pipeline.export_traces(
        genai_request(12, ids=[(RID, AID)], content=True).SerializeToString(), None, PROTOBUF
    )
    api = api_of(any_store)
    span = {**read_items(api, RID, encoded=False)[0], "sequence_id": 100, "span_id": "ab" * 8}
    api.add_span(span)
    truth = read_items(api, RID, encoded=False)
    assert len(truth) == 13 and truth[-1]["span_id"] == "ab" * 8
    assert any(item["attributes"].get("gen_ai.prompt.0.content") for item in truth)
    with api.reading():
        assert read_items(api, RID, encoded=True) == truth
        assert read_items(api, RID, encoded=False, limit=5, offset=10) == truth[10:]
    api.close_readers()  # type: ignore[attr-defined]
