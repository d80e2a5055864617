"""A read of every span of a rollout (no limit, as a trainer reads one) is sent a slice at a time
and is the same page the paged query gives: every order, offset and attempt, on both backends."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lightning_otlp.api import spans as span_routes
from lightning_otlp.api.bodies import SlicedResponse
from lightning_otlp.store import views
from lightning_otlp.store.lightning import Query, SpanOrder

from .payloads import make_request, make_span
from .span_views import counted_turns
from .support import ReceiverProcess, run_in_agl
from .test_api import API

pytestmark = pytest.mark.api

ROLLOUT = "ro-5e1f00000001"
PB = {"content-type": "application/x-protobuf"}
SLICE = 7


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def api(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[API]:
    """A file store (reads on read threads) or PostgreSQL, with slices of seven spans."""
    monkeypatch.setattr(span_routes, "SEND_SLICE", SLICE)
    url = f"sqlite:///{tmp_path}/store.db" if request.param == "sqlite" else None
    client = API(url or request.getfixturevalue("pg_url"))
    yield client
    client.close()


def _spans(api: API) -> None:
    """Two attempts of one rollout; sequence ids against arrival order, some of them equal."""
    for attempt, count in (("at-5e1f0001", 30), ("at-5e1f0002", 20)):
        spans = [
            make_span(
                f"step-{i}",
                attributes={
                    "agentlightning.rollout_id": ROLLOUT,
                    "agentlightning.attempt_id": attempt,
                    "agentlightning.span_sequence_id": 100 - i // 2,
                },
            )
            for i in range(count)
        ]
        for first in range(0, count, 10):  # several requests: several commits
            api.otlp(make_request(spans[first : first + 10]))


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"sort_by": "sequence_id"},
        {"sort_by": "sequence_id", "sort_order": "desc"},
        {"offset": 5},
        {"offset": 45},  # fewer than a slice left
        {"offset": 100},  # none left
        {"attempt_id": "at-5e1f0001", "sort_by": "sequence_id"},
        {"attempt_id": "latest"},
    ],
    ids=[
        "arrival",
        "sequence",
        "descending",
        "offset",
        "last-slice",
        "past-the-end",
        "attempt",
        "latest",
    ],
)
def test_a_whole_read_is_the_paged_read_sent_a_slice_at_a_time(
    api: API, params: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _spans(api)
    backend = api.client._transport.app.api.backend  # type: ignore[attr-defined]
    slices: list[int] = []
    real = backend.spans_at

    @functools.wraps(real)
    def counted(rowids: Any) -> Any:
        slices.append(len(rowids))
        return real(rowids)

    monkeypatch.setattr(backend, "spans_at", counted)
    whole = api.get("/spans", rollout_id=ROLLOUT, **params)
    paged = api.get("/spans", rollout_id=ROLLOUT, limit=1000, **params)
    searched = api.post("/spans/search", {"rollout_id": ROLLOUT, **params})
    assert whole == searched
    assert whole["items"] == paged["items"] and whole["total"] == paged["total"]
    assert (whole["limit"], whole["offset"]) == (-1, params.get("offset", 0))
    expected = {"at-5e1f0001": 30, "latest": 20}.get(params.get("attempt_id", ""), 50)
    assert whole["total"] == expected
    sent = max(0, expected - params.get("offset", 0))
    assert len(whole["items"]) == sent
    # The first slice comes with the order; each later one is read once the one before is sent.
    later = max(0, sent - SLICE)
    one = [SLICE] * (later // SLICE) + [later % SLICE] * bool(later % SLICE)
    assert slices == one * 2  # the GET and the search
    if params.get("sort_by"):
        keys = [s["sequence_id"] for s in whole["items"]]
        assert keys == sorted(keys, reverse=params.get("sort_order") == "desc")


def test_later_slices_give_way_more_than_a_page(api: API, monkeypatch: pytest.MonkeyPatch) -> None:
    """On read threads the first slice keeps to the share of every read, later slices (a bulk
    export) to a smaller one, their span look-ups as well as their building."""
    _spans(api)
    turns = counted_turns(monkeypatch)
    paged = api.get("/spans", rollout_id=ROLLOUT, limit=SLICE)
    assert turns and set(turns) == {views.BUILD_SHARE}
    turns.clear()
    whole = api.get("/spans", rollout_id=ROLLOUT)
    assert whole["items"][:SLICE] == paged["items"] and len(whole["items"]) == 50
    first = turns.index(views.SLICE_SHARE)
    assert set(turns[:first]) == {views.BUILD_SHARE}
    # Each later slice: a turn for its look-up of spans, one for its records, one per chunk built.
    assert set(turns[first:]) == {views.SLICE_SHARE} and len(turns) - first >= 2 * (50 // SLICE)


def test_later_slices_rest_longer_and_never_less_than_the_pace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rests: list[float] = []
    monkeypatch.setattr(views.time, "sleep", rests.append)
    pace = views.Pace(share=0.1)
    pace.ingesting()
    shares = (None, views.SLICE_SHARE, 0.5)
    used: dict[float | None, float] = {}
    for share in shares:
        with pace.turn(share):
            started = time.thread_time()
            sum(i * i for i in range(200_000))
            used[share] = time.thread_time() - started
    with pace.turn():
        pass
    assert len(rests) == 3
    ratios = [rest / used[share] for rest, share in zip(rests, shares, strict=True)]
    assert ratios[1] > 1.8 * ratios[0]  # nineteen times its CPU time against nine
    assert ratios[2] > 0.8 * ratios[0]  # a larger share than the pace's is not given


def test_a_whole_read_has_no_length_and_stops_when_its_client_leaves() -> None:
    """Chunked (no Content-Length); a client gone after the first slice is read no further."""
    reads: list[Any] = []

    async def read(rowids: Any) -> list[Any]:
        reads.append(list(rowids))
        return [b'{"n":2}'] * len(rowids)

    order = SpanOrder([b'{"n":1}'] * 2, list(range(100)), 102)
    response = SlicedResponse(order, Query(limit=-1, offset=0), read, 2)
    sent: list[dict[str, Any]] = []
    left = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body":
            left.set()  # the client leaves once it has the first slice

    asyncio.run(response({"type": "http"}, receive, send))
    assert b"content-length" not in dict(sent[0]["headers"])
    assert sent[1]["body"] == b'{"items":[{"n":1},{"n":1}'
    assert len(reads) <= 1  # at most the slice asked for while it left
    assert all(m.get("more_body") for m in sent[1:])  # the page is never closed for nobody


AGL_READ = """
import asyncio, json, sys
from agentlightning.store.client_server import LightningStoreClient

url, rollout = json.load(sys.stdin)

async def main():
    client = LightningStoreClient(url, retry_delays=(), health_retry_delays=())
    try:
        spans = await client.query_spans(rollout)
        latest = await client.query_spans(rollout, "latest")
    finally:
        await client.close()
    print(json.dumps([[s.span_id for s in spans], len(latest)]))

asyncio.run(main())
"""


@pytest.mark.e2e
def test_agentlightnings_client_reads_a_rollout_sent_a_slice_at_a_time(tmp_path: Path) -> None:
    """agentlightning's own client reads a rollout larger than a slice from a real server, in
    full and in order, over the chunked answer."""
    count = span_routes.SEND_SLICE * 2 + 123
    ids = {"agentlightning.rollout_id": ROLLOUT, "agentlightning.attempt_id": "at-5e1f0001"}
    receiver = ReceiverProcess(tmp_path / "store.db").start()
    try:
        sent: list[str] = []
        with httpx.Client(base_url=receiver.http_url, timeout=60) as client:
            for first in range(0, count, 1000):
                spans = [
                    make_span(f"s{i}", attributes=ids)
                    for i in range(first, min(count, first + 1000))
                ]
                sent += [s.span_id.hex() for s in spans]
                body = make_request(spans).SerializeToString()
                answer = client.post("/v1/traces", content=body, headers=PB)
                assert answer.status_code == 200, answer.text
            with client.stream("GET", "/v1/agl/spans", params={"rollout_id": ROLLOUT}) as whole:
                assert whole.headers.get("transfer-encoding") == "chunked"
                assert "content-length" not in whole.headers
                page = json.loads(whole.read())
        assert [s["span_id"] for s in page["items"]] == sent and page["total"] == count
        read, latest = run_in_agl(AGL_READ, [receiver.http_url, ROLLOUT])
    finally:
        receiver.stop()
    assert read == sent and latest == count
