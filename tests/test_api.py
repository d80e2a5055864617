"""The ``/v1/agl`` API in process: lifecycle, the shared span counter, OTLP-created rollouts,
errors, and durability across ``kill -9`` (that one with a real ``lightning-otlp serve``)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lightning_otlp.api import build_http_app
from lightning_otlp.receiver.decode import PROTOBUF
from lightning_otlp.receiver.pipeline import Pipeline
from lightning_otlp.receiver.transport.http import HTTPReceiver
from lightning_otlp.store import SQLiteStore
from lightning_otlp.wiring import open_store

from .payloads import make_request, make_span
from .support import Clock, ReceiverProcess

pytestmark = pytest.mark.api


class API:
    """The OTLP/HTTP port's app in process, driven through httpx's ASGI transport."""

    def __init__(self, url: str = "memory://") -> None:
        self.store = open_store(url)
        self.store.open()
        self.pipeline = Pipeline(self.store)
        # The API's time: a test moves it on (``clock.advance``) instead of waiting.
        self.clock = Clock()
        app = build_http_app(
            HTTPReceiver(self.pipeline), self.pipeline, watchdog_interval=0, clock=self.clock
        )
        self.loop = asyncio.new_event_loop()
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        )

    def __call__(self, method: str, path: str, status: int = 200, **kw: Any) -> Any:
        response = self.loop.run_until_complete(self.client.request(method, path, **kw))
        assert response.status_code == status, response.text
        return response.json()

    def post(self, path: str, body: Any = None, status: int = 200) -> Any:
        return self("POST", "/v1/agl" + path, status, json=body)

    def get(self, path: str, status: int = 200, **params: Any) -> Any:
        return self("GET", "/v1/agl" + path, status, params=params)

    def otlp(self, request: Any) -> None:
        response = self.loop.run_until_complete(
            self.client.post(
                "/v1/traces",
                content=request.SerializeToString(),
                headers={"content-type": PROTOBUF},
            )
        )
        assert response.status_code == 200, response.text

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()
        self.pipeline.close()
        self.store.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def api(request: pytest.FixtureRequest) -> Iterator[API]:
    """The same suite on every backend: the embedded store and a real PostgreSQL server."""
    url = "memory://" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    client = API(url)
    yield client
    client.close()


def span(rollout_id: str, attempt_id: str, seq: int, n: int, name: str = "s") -> dict[str, Any]:
    return {
        "rollout_id": rollout_id,
        "attempt_id": attempt_id,
        "sequence_id": seq,
        "trace_id": f"{n:032x}",
        "span_id": f"{n:016x}",
        "parent_id": None,
        "name": name,
        "status": {"status_code": "OK", "description": None},
        "attributes": {"n": n},
        "events": [],
        "links": [],
        "start_time": 1.0,
        "end_time": 2.0,
        "context": None,
        "parent": None,
        "resource": {"attributes": {}, "schema_url": ""},
    }


def enqueue(api: API, *inputs: Any, **request: Any) -> list[dict[str, Any]]:
    body = {"rollouts": [{"input": i, **request} for i in inputs]}
    created: list[dict[str, Any]] = api.post("/queues/rollouts/enqueue", body, 201)
    return created


def test_queue_order_retry_and_requeue_at_the_back(api: API) -> None:
    retry = {"max_attempts": 2, "retry_condition": ["failed"]}
    first, second = enqueue(api, 1, 2, config=retry)
    [taken] = api.post("/queues/rollouts/dequeue", {"worker_id": "w"})
    assert taken["rollout_id"] == first["rollout_id"]
    assert taken["status"] == "preparing" and taken["attempt"]["status"] == "preparing"
    path = f"/rollouts/{first['rollout_id']}/attempts/{taken['attempt']['attempt_id']}"
    api.post(path, {"status": "failed"})
    assert api.get(f"/rollouts/{first['rollout_id']}")["status"] == "requeuing"
    # the retry goes behind the rollout that was already waiting
    order = [r["rollout_id"] for r in api.post("/queues/rollouts/dequeue", {"limit": 5})]
    assert order == [second["rollout_id"], first["rollout_id"]]
    attempts = api.get(f"/rollouts/{first['rollout_id']}/attempts")["items"]
    assert [(a["sequence_id"], a["status"]) for a in attempts] == [(1, "failed"), (2, "preparing")]


def test_outcomes_carried_by_otlp_retry_as_the_rollout_config_says(api: API) -> None:
    """An attempt that fails by an OTLP span (``agentlightning.attempt.status``) is retried as
    if the runner had called ``update_attempt``, and frees its worker; the times are the span's."""
    retry = {"max_attempts": 2, "retry_condition": ["failed"]}
    [rollout] = enqueue(api, "x", config=retry)
    rollout_id = rollout["rollout_id"]
    [taken] = api.post("/queues/rollouts/dequeue", {"worker_id": "w1"})
    assert api.get("/workers/w1")["status"] == "busy"

    def report(attempt_id: str, status: str, end_ns: int) -> None:
        ids = {"agentlightning.rollout_id": rollout_id, "agentlightning.attempt_id": attempt_id}
        attrs = {**ids, "agentlightning.attempt.status": status}
        api.otlp(make_request([make_span("step", attributes=attrs, start_ns=end_ns - 10**6)]))

    first_end = time.time_ns() - 5 * 10**9
    report(taken["attempt"]["attempt_id"], "failed", first_end)
    assert api.get(f"/rollouts/{rollout_id}")["status"] == "requeuing"
    assert api.get("/workers/w1")["status"] == "idle"
    [again] = api.post("/queues/rollouts/dequeue", {"worker_id": "w2"})
    assert again["rollout_id"] == rollout_id and again["attempt"]["sequence_id"] == 2
    second_end = time.time_ns() - 10**9
    report(again["attempt"]["attempt_id"], "succeeded", second_end)
    done = api.get(f"/rollouts/{rollout_id}")
    assert done["status"] == "succeeded" and done["end_time"] == second_end / 1e9
    attempts = api.get(f"/rollouts/{rollout_id}/attempts")["items"]
    assert [(a["status"], a["end_time"]) for a in attempts] == [
        ("failed", first_end / 1e9),
        ("succeeded", second_end / 1e9),
    ]
    assert api.get("/workers/w2")["status"] == "idle"


def test_a_span_of_an_unknown_rollout_or_attempt_is_refused_and_leaves_nothing(
    api: API,
) -> None:
    """The rollout and attempt are checked in the insert's round trip: a refused span is
    rolled back with its call, counter included, and a duplicate is stored once."""
    [rollout] = enqueue(api, "x")
    [taken] = api.post("/queues/rollouts/dequeue", {})
    rollout_id, attempt_id = rollout["rollout_id"], taken["attempt"]["attempt_id"]
    ask = {"rollout_id": rollout_id, "attempt_id": attempt_id}
    first = api.post("/spans/next", ask)["sequence_id"]
    later = first + 10**12  # past any id spans/next issues meanwhile: a counter raised shows
    refused = api.post("/spans", span(rollout_id, "at-missing", later, 1), 404)
    assert "Attempt at-missing not found" in json.dumps(refused)
    api.post("/spans", span("ro-missing", attempt_id, later, 2), 404)
    assert api.post("/spans/search", {"rollout_id": rollout_id})["items"] == []
    assert api.post("/spans/search", {"rollout_id": "ro-missing"})["items"] == []
    assert first < api.post("/spans/next", ask)["sequence_id"] < later
    added = span(rollout_id, attempt_id, first, 3)
    api.post("/spans", added, 201)
    api.post("/spans", added, 201)
    assert len(api.post("/spans/search", {"rollout_id": rollout_id})["items"]) == 1


def test_one_span_counter_for_rest_spans_next_and_otlp(api: API) -> None:
    """REST spans, ``spans/next`` and OTLP spans share the attempt's counter; OTLP spans are
    numbered by start time in microseconds, and ``spans/next`` never issues less than now."""
    [rollout] = enqueue(api, "x")
    [taken] = api.post("/queues/rollouts/dequeue", {})
    rollout_id, attempt_id = rollout["rollout_id"], taken["attempt"]["attempt_id"]
    ask = {"rollout_id": rollout_id, "attempt_id": attempt_id}
    before = int(api.clock() * 1e6)  # the API's now
    first = api.post("/spans/next", ask)["sequence_id"]
    assert first >= before
    api.post("/spans", span(rollout_id, attempt_id, first, 1), 201)
    ids = {"agentlightning.rollout_id": rollout_id, "agentlightning.attempt_id": attempt_id}
    start_ns = time.time_ns()
    api.otlp(make_request([make_span("otlp", start_ns=start_ns)], resource=ids))
    after = api.post("/spans/next", ask)["sequence_id"]
    spans = api.post("/spans/search", {"rollout_id": rollout_id})["items"]
    assert [s["name"] for s in spans] == ["s", "otlp"]
    assert spans[0]["sequence_id"] == first
    assert abs(spans[1]["sequence_id"] - start_ns / 1000) <= 1  # its start, in microseconds
    assert after > spans[1]["sequence_id"]
    # the store's own reader (``lightning-otlp spans``) gives the API's span as it was added
    assert list(api.store.spans(rollout_id))[0]["attributes"] == {"n": 1}
    # the first span moved the attempt and the rollout to running
    assert api.get(f"/rollouts/{rollout_id}")["attempt"]["status"] == "running"
    assert api.get(f"/rollouts/{rollout_id}")["status"] == "running"


def test_a_rollout_created_by_otlp_is_an_ordinary_rollout(api: API) -> None:
    api.otlp(make_request([make_span("agent.step")]))  # no ids: one rollout per trace
    [rollout] = api.get("/rollouts", status_in="running")["items"]
    rollout_id = rollout["rollout_id"]
    attempt = rollout["attempt"]
    assert api.get(f"/rollouts/{rollout_id}/attempts/latest") == attempt
    [stored] = api.get("/spans", rollout_id=rollout_id)["items"]
    assert stored["name"] == "agent.step"
    finished = api.post(
        f"/rollouts/{rollout_id}/attempts/{attempt['attempt_id']}", {"status": "succeeded"}
    )
    assert finished["status"] == "succeeded"
    done = api.post("/waits/rollouts", {"rollout_ids": [rollout_id], "timeout": 0.1})
    assert [r["status"] for r in done] == ["succeeded"]


def test_watchdog_times_out_and_marks_unresponsive(api: API) -> None:
    slow = {"timeout_seconds": 60}
    quiet = {"unresponsive_seconds": 30, "max_attempts": 2, "retry_condition": ["unresponsive"]}
    [a] = enqueue(api, "a", config=slow)
    [b] = enqueue(api, "b", config=quiet)
    api.post("/queues/rollouts/dequeue", {"limit": 2, "worker_id": "w"})
    api.clock.advance(59)
    assert api.get(f"/rollouts/{a['rollout_id']}")["status"] == "preparing"
    assert api.get(f"/rollouts/{b['rollout_id']}")["attempt"]["status"] == "unresponsive"
    api.clock.advance(2)
    assert api.get(f"/rollouts/{a['rollout_id']}")["status"] == "failed"
    assert api.get(f"/rollouts/{a['rollout_id']}")["attempt"]["status"] == "timeout"
    assert api.get(f"/rollouts/{b['rollout_id']}")["status"] == "requeuing"
    assert api.get("/workers/w")["status"] == "unknown"


def test_the_api_reads_every_time_from_its_clock(api: API) -> None:
    t0 = api.clock()  # the API started then
    api.clock.advance(100)
    started = api.post("/rollouts", {"input": 1, "worker_id": "w"}, 201)
    assert started["start_time"] == started["attempt"]["start_time"] == t0 + 100
    resources = api.post("/resources", {"m": {"x": 1}}, 201)
    assert resources["create_time"] == resources["update_time"] == t0 + 100
    api.clock.advance(5)
    rollout_id, attempt_id = started["rollout_id"], started["attempt"]["attempt_id"]
    done = api.post(f"/rollouts/{rollout_id}/attempts/{attempt_id}", {"status": "succeeded"})
    assert done["end_time"] == api.get(f"/rollouts/{rollout_id}")["end_time"] == t0 + 105
    worker = api.get("/workers/w")
    assert (worker["last_busy_time"], worker["last_idle_time"]) == (t0 + 100, t0 + 105)
    assert api.post("/workers/w", {})["last_heartbeat_time"] == t0 + 105
    assert api.get("/statistics")["uptime"] == 105


def test_errors_answer_as_upstream(api: API) -> None:
    # Upstream answers 500 (and its client retries); a missing rollout is no server fault here.
    missing = api.post("/rollouts/ro-missing/attempts", None, 404)
    assert missing == {"detail": "Rollout ro-missing not found", "error_type": "ValueError"}
    lost = api.post("/rollouts/ro-missing/attempts/at-1", {"status": "failed"}, 404)
    assert lost["error_type"] == "ValueError"
    bad = api.post("/rollouts/search", {"sort_by": "nope"}, 400)
    assert bad["detail"].startswith("Invalid sort_by: nope")
    invalid = api.post("/rollouts", {"mode": "train"}, 422)
    assert invalid["detail"][0]["loc"] == ["body", "input"]
    assert api.get("/rollouts/ro-missing") is None
    [rollout] = enqueue(api, 1)
    api.post("/queues/rollouts/dequeue", {})
    null = api.post(f"/rollouts/{rollout['rollout_id']}", {"status": None}, 400)
    assert null == {"detail": "status is invalid; it cannot be a null value."}


def test_hostile_but_valid_bodies_are_422_and_store_nothing(api: API) -> None:
    """Deep nesting and integers past 64 bits are the caller's mistake, never a 5xx."""

    def raw(path: str, text: str) -> httpx.Response:
        return api.loop.run_until_complete(
            api.client.post(
                "/v1/agl" + path, content=text, headers={"content-type": "application/json"}
            )
        )

    for depth in (101, 300, 100_000):
        deep = raw("/rollouts", '{"input": ' + "[" * depth + "]" * depth + "}")
        assert deep.status_code == 422, deep.text
        assert "nested deeper" in deep.json()["detail"][0]["msg"]
    started = raw("/rollouts", '{"input": ' + "[" * 99 + "]" * 99 + "}")
    assert started.status_code == 201, started.text
    rid, aid = started.json()["rollout_id"], started.json()["attempt"]["attempt_id"]
    for seq in (2**63, 2**70, -(2**63) - 1):
        too_big = api.post("/spans", span(rid, aid, seq, 1), 422)
        assert "64-bit" in too_big["detail"][0]["msg"]
    assert raw("/spans", '{"sequence_id": Infinity}').status_code == 422
    assert api.post("/rollouts/search", {"limit": 2**70, "offset": 2**70}, 422)
    assert api.get("/spans", rollout_id=rid)["items"] == []
    assert api.post("/spans", span(rid, aid, 2**53, 2), 422)
    assert api.post("/spans", span(rid, aid, 2**53 - 1, 3), 201)["sequence_id"] == 2**53 - 1


@pytest.mark.e2e
def test_queue_attempts_and_spans_survive_kill_9(tmp_path: Path) -> None:
    receiver = ReceiverProcess(tmp_path / "store.db").start()
    base = receiver.http_url + "/v1/agl"
    body = {"rollouts": [{"input": i} for i in range(3)]}
    created = httpx.post(base + "/queues/rollouts/enqueue", json=body).json()
    [taken] = httpx.post(base + "/queues/rollouts/dequeue", json={"worker_id": "w1"}).json()
    rollout_id, attempt_id = taken["rollout_id"], taken["attempt"]["attempt_id"]
    added = httpx.post(base + "/spans", json=span(rollout_id, attempt_id, 1, 1))
    assert added.status_code == 201
    receiver.kill()  # SIGKILL right after the answers: every answered write must be on disk
    receiver.start()
    base = receiver.http_url + "/v1/agl"
    try:
        rollout = httpx.get(f"{base}/rollouts/{rollout_id}").json()
        assert rollout["status"] == "running" and rollout["attempt"]["attempt_id"] == attempt_id
        spans = httpx.get(base + "/spans", params={"rollout_id": rollout_id}).json()["items"]
        assert [s["span_id"] for s in spans] == [f"{1:016x}"]
        nxt = httpx.post(
            base + "/spans/next", json={"rollout_id": rollout_id, "attempt_id": attempt_id}
        )
        assert nxt.json()["sequence_id"] > 1
        rest = httpx.post(base + "/queues/rollouts/dequeue", json={"limit": 5}).json()
        assert [r["rollout_id"] for r in rest] == [r["rollout_id"] for r in created[1:]]
        assert httpx.get(base + "/workers/w1").json()["current_rollout_id"] == rollout_id
    finally:
        assert receiver.stop() == 0
    assert "Traceback" not in receiver.log()


def test_bearer_tokens_guard_the_api_as_they_guard_otlp() -> None:
    from lightning_otlp.receiver.auth import BearerAuth

    store = SQLiteStore(":memory:", synchronous="OFF")
    store.open()
    pipeline = Pipeline(store)
    auth = BearerAuth((b"s3cret",))
    app = build_http_app(HTTPReceiver(pipeline, auth), pipeline, auth=auth)

    async def go() -> tuple[int, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            refused = await client.get("/v1/agl/rollouts")
            allowed = await client.get(
                "/v1/agl/rollouts", headers={"authorization": "Bearer s3cret"}
            )
            return refused.status_code, allowed.status_code

    try:
        assert asyncio.run(go()) == (401, 200)
    finally:
        pipeline.close()
        store.close()
