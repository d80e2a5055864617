"""The ``/v1/agl`` API under attack, in process: nulls, sizes, huge id lists, waits that never
end, errors inside the watchdog, records OTLP cannot corrupt (against a real receiver:
``test_api_limits_e2e.py``). Each test checks the status code, that nothing acknowledged is
lost, and what an honest client gets meanwhile."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceResponse as PB2ExportTraceServiceResponse,
)

from lightning_otlp.api import (
    APILimits,
    Dashboard,
    LightningAPI,
    ReceiverApp,
    build_http_app,
    calls,
)
from lightning_otlp.errors import Overloaded
from lightning_otlp.receiver.pipeline import Pipeline
from lightning_otlp.receiver.transport.http import HTTPReceiver
from lightning_otlp.store import SQLiteStore

from .payloads import make_request, make_span
from .test_api import span

pytestmark = pytest.mark.api


# -- in process ------------------------------------------------------------------------------


class App:
    """The OTLP/HTTP port's app in process (httpx's ASGI transport), with small API limits."""

    def __init__(self, limits: APILimits, *, max_in_flight: int = 64) -> None:
        self.store = SQLiteStore(":memory:", synchronous="OFF")
        self.store.open()
        self.pipeline = Pipeline(self.store, max_in_flight=max_in_flight)
        self.app = build_http_app(
            HTTPReceiver(self.pipeline), self.pipeline, watchdog_interval=0, limits=limits
        )
        assert self.app.api is not None
        self.api: LightningAPI = self.app.api
        self.loop = asyncio.new_event_loop()
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://test"
        )

    def post(self, path: str, body: Any, status: int) -> Any:
        response = self.run(self.client.post("/v1/agl" + path, json=body))
        assert response.status_code == status, response.text
        return response.json()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.run(self.client.aclose())
        self.loop.close()
        self.api.close()
        self.pipeline.close()
        self.store.close()


@pytest.fixture
def app() -> Iterator[App]:
    client = App(APILimits(max_batch=5, max_wait=0.5, wait_recheck=3600))
    yield client
    client.close()


def test_nulls_and_missing_fields_are_422_not_500(app: App) -> None:
    [queued] = app.post("/queues/rollouts/enqueue", {"rollouts": [{"input": 1}]}, 201)
    for path, body in [
        ("/queues/rollouts/dequeue", {"limit": None}),
        ("/rollouts/search", {"limit": None}),
        ("/rollouts/search", {"offset": None}),
        ("/rollouts/search", {"sort_order": None}),
        ("/workers/search", {"filter_logic": None}),
        ("/spans/search", {"rollout_id": queued["rollout_id"], "limit": None}),
    ]:
        answer = app.post(path, body, 422)
        assert answer["detail"][0]["input"] is None, (path, answer)
    null_sequence = {
        "rollout_id": queued["rollout_id"],
        "attempt_id": "at-x",
        "sequence_id": None,
        "trace_id": "0" * 32,
        "span_id": "0" * 16,
        "parent_id": None,
        "name": "s",
        "status": {"status_code": "OK"},
        **{k: None for k in ("attributes", "events", "links", "start_time", "end_time")},
        **{k: None for k in ("context", "parent", "resource")},
    }
    assert app.post("/spans", null_sequence, 422)["detail"][0]["loc"] == ["body", "sequence_id"]
    assert app.post("/spans/search", {}, 422)["detail"][0]["loc"] == ["body", "rollout_id"]
    assert app.post("/queues/rollouts/dequeue", {}, 200)[0]["rollout_id"] == queued["rollout_id"]


def test_a_chunked_body_past_the_size_limit_is_413(app: App) -> None:
    app.api.limits = APILimits(max_request_bytes=1 << 16)

    async def chunks() -> Any:
        for _ in range(4):
            yield b" " * (1 << 15)

    refused = app.run(app.client.post("/v1/agl/resources", content=chunks()))
    assert refused.status_code == 413 and refused.headers["connection"] == "close"
    assert app.pipeline.budget.used == 0
    assert app.post("/resources", {"m": {"x": 1}}, 201)["resources"] == {"m": {"x": 1}}


def test_batches_past_the_limit_are_a_plain_400(app: App) -> None:
    six = {"rollouts": [{"input": i} for i in range(6)]}
    assert "at most 5" in app.post("/queues/rollouts/enqueue", six, 400)["detail"]
    assert app.post("/queues/rollouts/dequeue", {"limit": 6}, 400)
    ids = [f"ro-{i}" for i in range(300_000)]  # past SQLite's variable limit too
    assert app.post("/rollouts/search", {"rollout_id_in": ids}, 400)
    assert app.post("/waits/rollouts", {"rollout_ids": ids, "timeout": 0}, 400)
    assert app.post("/rollouts/search", {}, 200)["items"] == []  # nothing was enqueued
    five = {"rollouts": [{"input": i} for i in range(5)]}
    assert len(app.post("/queues/rollouts/enqueue", five, 201)) == 5


def test_a_wait_is_woken_by_the_change_it_waits_for(app: App) -> None:
    """wait_recheck is an hour here: only the finishing write can end the wait early."""
    app.api.limits = APILimits(max_wait=3600, wait_recheck=3600)
    [rollout] = app.post("/queues/rollouts/enqueue", {"rollouts": [{"input": 1}]}, 201)
    rollout_id = rollout["rollout_id"]

    async def go() -> list[Any]:
        wait = asyncio.ensure_future(
            app.client.post("/v1/agl/waits/rollouts", json={"rollout_ids": [rollout_id]})
        )
        while app.pipeline.changes.waiting == 0:
            await asyncio.sleep(0.01)
        done = await app.client.post(f"/v1/agl/rollouts/{rollout_id}", json={"status": "succeeded"})
        assert done.status_code == 200
        answer = await asyncio.wait_for(wait, 60)
        assert answer.status_code == 200
        return list(answer.json())

    [finished] = app.run(go())
    assert finished["rollout_id"] == rollout_id and finished["status"] == "succeeded"


def test_small_bodies_are_never_queued_behind_a_large_one_being_parsed(app: App) -> None:
    """With the parse thread busy (as with a large body another client sent), a small call is
    still answered; a large body waits for the thread."""
    busy, release = threading.Event(), threading.Event()

    def hold() -> None:
        busy.set()
        release.wait()  # set by the test, whatever happens

    app.api._parser.submit(hold)
    assert busy.wait(60)
    large = {"rollouts": [{"input": "x" * (calls.INLINE_JSON_BYTES + 1)}]}

    async def go() -> httpx.Response:
        try:
            pending = asyncio.ensure_future(
                app.client.post("/v1/agl/queues/rollouts/enqueue", json=large)
            )
            small = await asyncio.wait_for(  # a deadline only for a failing run to end
                app.client.post(
                    "/v1/agl/queues/rollouts/enqueue", json={"rollouts": [{"input": 1}]}
                ),
                30,
            )
            assert small.status_code == 201, small.text
            assert not pending.done()  # it cannot be parsed while the thread is held
        finally:
            release.set()
        return await asyncio.wait_for(pending, 60)

    assert app.run(go()).status_code == 201


def test_a_wait_without_a_sane_timeout_waits_at_most_the_maximum(app: App) -> None:
    [rollout] = app.post("/queues/rollouts/enqueue", {"rollouts": [{"input": 1}]}, 201)
    for timeout in (None, "NaN", 1e300, 2**63, "1_000"):
        body = {"rollout_ids": [rollout["rollout_id"]], "timeout": timeout}
        assert app.post("/waits/rollouts", body, 200) == []
    assert app.pipeline.changes.waiting == 0


def test_api_calls_never_take_the_in_flight_places_of_otlp() -> None:
    pipeline = Pipeline(SQLiteStore(":memory:"), max_in_flight=2)
    try:
        pipeline._enter("api")
        pipeline._enter("api")
        with pytest.raises(Overloaded):
            pipeline._enter("api")
        pipeline._enter("otlp")  # OTLP still has its own places
        pipeline._enter("otlp")
        with pytest.raises(Overloaded):
            pipeline._enter("otlp")
        assert pipeline.in_flight == 4
    finally:
        pipeline.close()


def test_a_failing_watchdog_scan_is_a_503_and_lets_the_store_go(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = app.api.backend
    original = backend.scan  # type: ignore[attr-defined]
    calls = []

    def damaged(conn: sqlite3.Connection, now: float, *args: Any) -> None:
        calls.append(now)
        if len(calls) == 1:
            raise sqlite3.DatabaseError("database disk image is malformed")
        original(conn, now, *args)

    monkeypatch.setattr(backend, "scan", damaged)
    failed = app.post("/queues/rollouts/enqueue", {"rollouts": [{"input": 1}]}, 503)
    assert "malformed" in failed["detail"]
    [queued] = app.post("/queues/rollouts/enqueue", {"rollouts": [{"input": 2}]}, 201)
    assert [r["input"] for r in app.post("/rollouts/search", {}, 200)["items"]] == [2]
    assert queued["status"] == "queuing"


def test_an_unexpected_backend_error_is_a_logged_500_not_a_400(
    app: App, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("a defect")

    monkeypatch.setattr(app.api.backend, "statistics", broken)
    response = app.run(app.client.get("/v1/agl/statistics"))
    assert response.status_code == 500
    assert response.json() == {"detail": "a defect", "error_type": "ValueError"}
    assert "the LightningStore API failed" in caplog.text


def test_a_missing_dashboard_asset_is_404(tmp_path: Path) -> None:
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text("<html></html>")
    (tmp_path / "assets" / "app.js").write_text("1")

    async def receiver(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not for the receiver")

    app = ReceiverApp(receiver, None, Dashboard(tmp_path))

    async def go() -> tuple[int, int, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            found = await client.get("/assets/app.js")
            missing = await client.get("/assets/nope.js")
            page = await client.get("/rollouts")
            return found.status_code, missing.status_code, page.status_code

    assert asyncio.run(go()) == (200, 404, 200)


# -- records OTLP cannot corrupt -------------------------------------------------------------


def _export(app: App, rollout_id: str, attempt_id: str | None, **attrs: Any) -> Any:
    ids = {"agentlightning.rollout_id": rollout_id, **attrs}
    if attempt_id is not None:
        ids["agentlightning.attempt_id"] = attempt_id
    request = make_request([make_span("late", attributes=ids)])
    response = app.run(
        app.client.post(
            "/v1/traces",
            content=request.SerializeToString(),
            headers={"content-type": "application/x-protobuf"},
        )
    )
    assert response.status_code == 200, response.text
    answer = PB2ExportTraceServiceResponse()
    answer.ParseFromString(response.content)
    return answer.partial_success


def _metric(app: App, name: str) -> float:
    return next(m.value for m in app.store.metrics() if m.name == name)


def test_a_span_cannot_reopen_a_finished_attempt_or_rollout(app: App) -> None:
    [rollout] = app.post("/queues/rollouts/enqueue", {"rollouts": [{"input": 1}]}, 201)
    rollout_id = rollout["rollout_id"]
    [taken] = app.post("/queues/rollouts/dequeue", {"worker_id": "w"}, 200)
    attempt_id = taken["attempt"]["attempt_id"]
    app.post(f"/rollouts/{rollout_id}/attempts/{attempt_id}", {"status": "succeeded"}, 200)
    # a late span of the finished attempt, claiming it failed: stored, the claim ignored
    late = _export(app, rollout_id, attempt_id, **{"agentlightning.attempt.status": "failed"})
    assert late.rejected_spans == 0
    assert _metric(app, "lightning_otlp_ignored_outcomes") == 1
    # a made-up attempt: refused with a message, nothing reopened
    made_up = _export(app, rollout_id, "at-madeup1")
    assert made_up.rejected_spans == 1 and "does not exist" in made_up.error_message
    now = app.post("/rollouts/search", {"rollout_id_in": [rollout_id]}, 200)["items"][0]
    assert now["status"] == "succeeded"
    attempts = app.run(app.client.get(f"/v1/agl/rollouts/{rollout_id}/attempts")).json()
    assert [(a["attempt_id"], a["status"]) for a in attempts["items"]] == [
        (attempt_id, "succeeded")
    ]
    spans = app.post("/spans/search", {"rollout_id": rollout_id}, 200)["items"]
    assert [s["attempt_id"] for s in spans] == [attempt_id]  # the late span, stored


def test_a_span_cannot_take_a_queued_rollout_off_the_queue(app: App) -> None:
    [rollout] = app.post("/queues/rollouts/enqueue", {"rollouts": [{"input": 1}]}, 201)
    rollout_id = rollout["rollout_id"]
    for attempt_id in (None, "at-madeup2"):
        refused = _export(app, rollout_id, attempt_id)
        assert refused.rejected_spans == 1 and "does not exist" in refused.error_message
    [taken] = app.post("/queues/rollouts/dequeue", {"worker_id": "w"}, 200)
    assert taken["rollout_id"] == rollout_id and taken["attempt"]["sequence_id"] == 1
    # the worker's own spans are stored, and start the prepared rollout running as upstream
    assert _export(app, rollout_id, taken["attempt"]["attempt_id"]).rejected_spans == 0
    now = app.post("/rollouts/search", {"rollout_id_in": [rollout_id]}, 200)["items"][0]
    assert now["status"] == "running"


def test_spans_still_start_attempts_of_rollouts_otlp_created(app: App) -> None:
    """The SDK's rollout() blocks: a new attempt id on its own rollout is a retry."""
    first = _export(app, "ro-sdk000000001", "at-00000001")
    second = _export(app, "ro-sdk000000001", "at-00000002")
    assert first.rejected_spans == 0 and second.rejected_spans == 0
    attempts = app.run(app.client.get("/v1/agl/rollouts/ro-sdk000000001/attempts")).json()
    assert [a["attempt_id"] for a in attempts["items"]] == ["at-00000001", "at-00000002"]


def test_the_dashboard_asks_for_the_token_and_shows_nothing_without_it(tmp_path: Path) -> None:
    from lightning_otlp.receiver.auth import BearerAuth

    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text("<html>the dashboard</html>")
    (tmp_path / "assets" / "app.js").write_text("secret code")
    store = SQLiteStore(":memory:", synchronous="OFF")
    store.open()
    pipeline = Pipeline(store)
    auth = BearerAuth((b"s3;cr=t",))
    app = build_http_app(HTTPReceiver(pipeline, auth), pipeline, auth=auth, dashboard=str(tmp_path))

    async def go() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for path in ("/", "/rollouts?x=1", "/assets/app.js"):
                page = await client.get(path)
                assert page.status_code == 401 and "Sign in" in page.text
                assert "the dashboard" not in page.text and "secret" not in page.text
            assert (await client.get("/v1/agl/rollouts")).status_code == 401
            wrong = await client.post("/login", data={"token": "nope", "next": "/rollouts"})
            assert wrong.status_code == 401 and "unknown token" in wrong.text
            elsewhere = await client.post(
                "/login", data={"token": "s3;cr=t", "next": "//evil.example/"}
            )
            assert elsewhere.status_code == 303 and elsewhere.headers["location"] == "/"
            cookie = elsewhere.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
            # the cookie the browser keeps opens the dashboard and its API calls
            assert (await client.get("/rollouts")).text == "<html>the dashboard</html>"
            assert (await client.get("/assets/app.js")).text == "secret code"
            assert (await client.get("/v1/agl/rollouts")).status_code == 200
            client.cookies.clear()
            assert (await client.get("/v1/agl/rollouts")).status_code == 401

    try:
        asyncio.run(go())
    finally:
        pipeline.close()
        store.close()


def test_api_reads_do_not_wait_for_the_store_thread(tmp_path: Path) -> None:
    """A file store: API reads run on read connections of their own, so a read is answered
    while the store thread is busy (a long commit, or a long read before this change)."""
    import threading

    store = SQLiteStore(str(tmp_path / "reads.db"), synchronous="OFF")
    store.open()
    pipeline = Pipeline(store)
    app = build_http_app(HTTPReceiver(pipeline), pipeline, watchdog_interval=3600)
    assert app.api is not None
    held = threading.Event()

    async def go() -> list[Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            body = {"rollouts": [{"input": i} for i in range(3)]}
            assert (await client.post("/v1/agl/queues/rollouts/enqueue", json=body)).is_success
            assert (await client.get("/v1/agl/rollouts")).is_success  # the watchdog's turn
            busy = asyncio.get_running_loop().run_in_executor(pipeline._executor, held.wait, 60)
            try:
                read = await asyncio.wait_for(client.get("/v1/agl/rollouts"), 30)
                spans = await asyncio.wait_for(
                    client.get("/v1/agl/spans", params={"rollout_id": "ro-none"}), 30
                )
                assert spans.json()["items"] == []
            finally:
                held.set()
                await busy
            return list(read.json()["items"])

    try:
        assert [r["input"] for r in asyncio.run(go())] == [0, 1, 2]
    finally:
        app.api.close()
        pipeline.close()
        store.close()


def test_span_and_worker_filters_run_in_sql_with_upstream_meaning(app: App) -> None:
    started = app.post("/rollouts", {"input": 1}, 201)
    rollout_id, attempt_id = started["rollout_id"], started["attempt"]["attempt_id"]
    ids = {"agentlightning.rollout_id": rollout_id, "agentlightning.attempt_id": attempt_id}
    otlp = make_span("chat model", trace_id=b"\xab" * 16, span_id=b"\xcd" * 8, attributes=ids)
    response = app.run(
        app.client.post(
            "/v1/traces",
            content=make_request([otlp]).SerializeToString(),
            headers={"content-type": "application/x-protobuf"},
        )
    )
    assert response.status_code == 200
    text_ids = {"trace_id": "T-text", "span_id": "S-text"}  # as an API client may send them
    api_span = {**span(rollout_id, attempt_id, 9, 1, "tool call"), **text_ids}
    app.post("/spans", api_span, 201)

    def names(**query: Any) -> list[str]:
        page = app.post("/spans/search", {"rollout_id": rollout_id, **query}, 200)
        return sorted(s["name"] for s in page["items"])

    assert names(trace_id="ab" * 16) == ["chat model"]  # stored as bytes, asked as hex
    assert names(span_id_contains="cdcd") == ["chat model"]
    assert names(trace_id="T-text") == ["tool call"]
    assert names(name_contains="call", span_id_contains="cd") == []
    assert names(name_contains="call", span_id_contains="cd", filter_logic="or") == [
        "chat model",
        "tool call",
    ]
    assert names(name_contains="", parent_id="nope", filter_logic="or") == [
        "chat model",
        "tool call",
    ]
    assert names(name_contains="CALL") == []  # case counts, as upstream's `in`
    for worker in ("w-new-1", "w-old-2"):
        app.run(app.client.post(f"/v1/agl/workers/{worker}", json={}))
    found = app.post("/workers/search", {"worker_id_contains": "new"}, 200)["items"]
    assert [w["worker_id"] for w in found] == ["w-new-1"]
    both = {"worker_id_contains": "new", "status_in": ["unknown"], "filter_logic": "or"}
    assert len(app.post("/workers/search", both, 200)["items"]) == 2
    none = {"worker_id_contains": "new", "status_in": ["busy"]}
    assert app.post("/workers/search", none, 200)["items"] == []
