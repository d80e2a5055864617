"""Nothing costly holds up the rest: a large OTLP body decodes on a lane of its own, and a
LightningStore API wait looks at the store again only after a write to the rollouts it waits on."""

from __future__ import annotations

import asyncio
import functools
import threading
from typing import Any

import pytest

from lightning_otlp.api import APILimits
from lightning_otlp.receiver.changes import Changes
from lightning_otlp.receiver.decode import PROTOBUF
from lightning_otlp.receiver.pipeline import LARGE_BODY_BYTES, Pipeline
from lightning_otlp.store import SQLiteStore

from .payloads import genai_request
from .test_api_limits import App


def test_a_small_request_is_never_queued_behind_a_large_one_being_decoded() -> None:
    store = SQLiteStore(":memory:", synchronous="OFF")
    store.open()
    pipeline = Pipeline(store)
    large = genai_request(2048, seed=1).SerializeToString()
    small = genai_request(16, seed=2).SerializeToString()
    assert len(small) < LARGE_BODY_BYTES <= len(large)
    busy, release = threading.Event(), threading.Event()
    decode = pipeline.decode_traces

    def held(body: bytes, *args: Any) -> Any:
        if len(body) >= LARGE_BODY_BYTES:  # as a flood of tiny spans being counted
            busy.set()
            release.wait()  # set by the test, whatever happens
        return decode(body, *args)

    pipeline.decode_traces = held  # type: ignore[method-assign]

    async def go() -> None:
        pending = asyncio.ensure_future(pipeline.export("traces", large, None, PROTOBUF, "http"))
        try:
            while not busy.is_set():
                await asyncio.sleep(0.01)
            # a deadline only for a failing run to end
            await asyncio.wait_for(pipeline.export("traces", small, None, PROTOBUF, "grpc"), 30)
            assert store.count_spans() == 16 and not pending.done()
        finally:
            release.set()
        await asyncio.wait_for(pending, 60)

    try:
        asyncio.run(go())
        assert store.count_spans() == 16 + 2048
    finally:
        pipeline.close()
        store.close()


def test_changes_wake_only_the_waits_on_a_rollout_named() -> None:
    async def go() -> None:
        changes = Changes()
        mine = asyncio.ensure_future(changes.wait(60, ["ro-a", "ro-b"]))
        theirs = asyncio.ensure_future(changes.wait(60, ["ro-c"]))
        anything = asyncio.ensure_future(changes.wait(60))
        while changes.waiting < 3:
            await asyncio.sleep(0)
        changes.notify({"ro-b"})
        await asyncio.wait_for(asyncio.gather(mine, anything), 30)
        assert not theirs.done() and changes.waiting == 1
        changes.notify()  # a write naming no rollout wakes every wait
        await asyncio.wait_for(theirs, 30)
        assert changes.waiting == 0

    asyncio.run(go())


@pytest.mark.api
def test_a_wait_looks_again_only_after_a_write_to_its_rollouts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Enqueues, dequeues and writes to other rollouts leave a wait asleep: it read the store
    once, and reads again when its own rollout's attempt finishes."""
    app = App(APILimits(max_wait=3600, wait_recheck=3600))
    try:
        looks: list[Any] = []
        real = app.api.backend.finished_rollouts

        @functools.wraps(real)
        def counted(*args: Any) -> Any:
            looks.append(args)
            return real(*args)

        monkeypatch.setattr(app.api.backend, "finished_rollouts", counted)
        app.post("/queues/rollouts/enqueue", {"rollouts": [{"input": 1}, {"input": 2}]}, 201)
        taken = app.post("/queues/rollouts/dequeue", {"worker_id": "w", "limit": 2}, 200)
        (mine, my_attempt), (other, other_attempt) = (
            (r["rollout_id"], r["attempt"]["attempt_id"]) for r in taken
        )

        async def finish(rollout_id: str, attempt_id: str) -> None:
            path = f"/v1/agl/rollouts/{rollout_id}/attempts/{attempt_id}"
            done = await app.client.post(path, json={"status": "succeeded"})
            assert done.status_code == 200, done.text

        async def go() -> Any:
            wait = asyncio.ensure_future(
                app.client.post("/v1/agl/waits/rollouts", json={"rollout_ids": [mine]})
            )
            while app.pipeline.changes.waiting == 0:
                await asyncio.sleep(0.01)
            await finish(other, other_attempt)
            enqueued = await app.client.post(
                "/v1/agl/queues/rollouts/enqueue", json={"rollouts": [{"input": 3}]}
            )
            assert enqueued.status_code == 201
            await asyncio.sleep(0.5)  # past the settling pause: a woken wait would have looked
            assert len(looks) == 1 and not wait.done()
            await finish(mine, my_attempt)
            return (await asyncio.wait_for(wait, 60)).json()

        [finished] = app.run(go())
        assert finished["rollout_id"] == mine and finished["status"] == "succeeded"
        assert len(looks) == 2
    finally:
        app.close()
