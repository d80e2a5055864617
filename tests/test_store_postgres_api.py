"""The LightningStore API on PostgreSQL, on a real server: how often a call waits on the server
(each wait is a round trip, and under load a scheduler wake-up of the client and the server),
and dequeues from several receivers at once handing out each rollout once without running
again."""

from __future__ import annotations

import asyncio
import os
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from psycopg import pq

from lightning_otlp.api import build_http_app
from lightning_otlp.errors import StoreUnavailable
from lightning_otlp.receiver.pipeline import Pipeline
from lightning_otlp.receiver.transport.http import HTTPReceiver
from lightning_otlp.store import SQLiteStore, postgres
from lightning_otlp.store.lightning import Query
from lightning_otlp.store.postgres import PostgresStore
from lightning_otlp.store.postgres_api import PostgresLightningStore

from .postgres import execute
from .test_api import span

pytestmark = pytest.mark.postgres

# The messages after which the client waits for the server's answer: a simple query, a sync
# and a flush request (what psycopg sends when it reads a result in pipeline mode).
_WAITS = frozenset({"Query", "Sync", "Flush"})
# At most this many waits a call (a dequeue's include waiting for the queue lock); one a
# statement before, 6 to 12.
_MOST_WAITS = {
    "enqueue": 3,
    "dequeue": 4,
    "spans/next": 2,
    "add_span": 2,
    "update_attempt": 3,
    "query_spans": 1,
}


class Traced:
    """The messages the store's pooled connections send, from libpq's own trace."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = path.open("w")

    def configure(self, configure: Callable[[Any], None]) -> Callable[[Any], None]:
        def traced(raw: Any) -> None:
            configure(raw)
            raw.pgconn.trace(self.file.fileno())
            raw.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)

        return traced

    def waits(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[int, Any]:
        """How many times ``call(*args, **kwargs)`` waited on the server, and its answer."""
        self.file.flush()
        start = os.path.getsize(self.path)
        out = call(*args, **kwargs)
        self.file.flush()
        with self.path.open() as trace:
            trace.seek(start)
            sent = [
                fields[2].split()[0]
                for fields in (line.split("\t") for line in trace)
                if len(fields) > 2 and fields[0] == "F"
            ]
        # psycopg follows a sync with a flush request: one wait, not two.
        waits = [kind for kind in sent if kind in _WAITS]
        after_sync = sum(
            1 for a, b in zip(sent, sent[1:], strict=False) if (a, b) == ("Sync", "Flush")
        )
        return len(waits) - after_sync, out


def test_each_call_waits_on_the_server_a_few_times_not_once_a_statement(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A runner's cycle (enqueue, dequeue, spans/next and add_span, update_attempt, then the
    Trainer's query_spans) as the receiver runs it: what each call waits on the server."""
    traced = Traced(tmp_path / "trace")
    monkeypatch.setattr(postgres, "configure", traced.configure(postgres.configure))
    store = PostgresStore(pg_url)
    store.open()
    api = PostgresLightningStore(store)
    most: Counter[str] = Counter()

    def waits(name: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        count, out = traced.waits(call, *args, **kwargs)
        most[name] = max(most[name], count)
        return out

    try:
        api.watch()  # the watchdog's first scan, due at once; then not for 10 s
        for n in range(3):
            waits("enqueue", api.enqueue_rollouts, [{"input": n}])
            (rollout,) = waits("dequeue", api.dequeue_rollouts, 1, "w0")
            ids = rollout["rollout_id"], rollout["attempt"]["attempt_id"]
            for k in range(2):
                seq = waits("spans/next", api.next_span_sequence_id, *ids)
                added = span(*ids, seq, n * 10 + k + 1)
                assert waits("add_span", api.add_span, added) == added
            waits("update_attempt", api.update_attempt, *ids, {"status": "succeeded"})
            with api.reading():
                page = waits(
                    "query_spans",
                    api.query_spans,
                    ids[0],
                    None,
                    filters={},
                    filter_logic="and",
                    query=Query(),
                )
            sequence = [item["sequence_id"] for item in page.items]
            assert page.total == 2 and sequence == sorted(sequence)
    finally:
        store.close()
    assert set(most) == set(_MOST_WAITS)
    assert {name: count for name, count in most.items() if count > _MOST_WAITS[name]} == {}


def test_workers_on_two_receivers_dequeue_at_once_each_rollout_once_none_run_again(
    pg_url: str,
) -> None:
    """Dequeues take the fleet's queue lock before their snapshot, so they never overlap:
    serializable dequeues that did conflicted, a third of them ran again under 8 workers."""
    stores = [PostgresStore(pg_url), PostgresStore(pg_url)]
    for store in stores:
        store.open()
    apis = [PostgresLightningStore(store) for store in stores]
    try:
        queued = apis[0].enqueue_rollouts([{"input": n} for n in range(60)])
        taken: list[str] = []
        errors: list[BaseException] = []

        def work(index: int) -> None:
            try:
                while got := apis[index % 2].dequeue_rollouts(1, f"w{index}"):
                    taken.extend(rollout["rollout_id"] for rollout in got)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors
        assert sorted(taken) == sorted(rollout["rollout_id"] for rollout in queued)
        conflicts = sum(
            metric.value
            for store in stores
            for metric in store.metrics()
            if metric.name == "lightning_otlp_store_conflicts"
        )
        assert conflicts == 0
    finally:
        for store in stores:
            store.close()


def test_the_queue_lock_of_a_dequeue_that_fails_or_dies_passes_on(pg_url: str) -> None:
    """A dequeue that fails releases the queue lock, also when the failure comes with the
    commit's answer; one whose receiver dies (its connection cut, as a kill -9 cuts it)
    releases it with its session."""
    first, second = PostgresStore(pg_url), PostgresStore(pg_url)
    first.open()
    second.open()
    api = PostgresLightningStore(second)
    try:
        api.enqueue_rollouts([{"input": 1}, {"input": 2}])
        with pytest.raises(ZeroDivisionError), first.transaction(pipelined=True, queue=True):
            raise ZeroDivisionError
        assert len(api.dequeue_rollouts(1, "w1")) == 1
        # A failure known only from the commit's answer, which the unlock was sent with: the
        # server skipped the unlock, the lock is released after.
        with pytest.raises(StoreUnavailable, match="division by zero"):
            with first.transaction(pipelined=True, queue=True) as conn:
                conn.execute("SELECT 1 / 0")
        api.enqueue_rollouts([{"input": 3}])
        dequeued: list[Any] = []
        taker = threading.Thread(
            target=lambda: dequeued.extend(api.dequeue_rollouts(1, "w1")), daemon=True
        )
        taker.start()
        taker.join(30)
        assert len(dequeued) == 1
        done = threading.Event()
        with pytest.raises(StoreUnavailable):
            with first.transaction(pipelined=True, queue=True) as held:
                (pid,) = held.execute("SELECT pg_backend_pid()").fetchone()
                waiting = threading.Thread(
                    target=lambda: done.set() if api.dequeue_rollouts(1, "w2") else None
                )
                waiting.start()
                assert not done.wait(0.5)  # held: the other receiver's dequeue waits
                execute(pg_url, f"SELECT pg_terminate_backend({pid})")
                held.execute("SELECT 1").fetchone()  # the dead receiver's connection is gone
        waiting.join(60)
        assert done.is_set()
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_api_writes_never_queue_behind_the_store_thread(
    backend: str, pg_url: str, tmp_path: Path
) -> None:
    """An API write runs on a thread of its own, so it is answered while the store thread is
    held (a long commit, a step of idle work): on PostgreSQL the database orders the writers, on
    SQLite the write takes the one connection before the commits waiting for it."""
    store: PostgresStore | SQLiteStore = (
        PostgresStore(pg_url) if backend == "postgresql" else SQLiteStore(str(tmp_path / "s.db"))
    )
    store.open()
    pipeline = Pipeline(store)
    app = build_http_app(HTTPReceiver(pipeline), pipeline, watchdog_interval=3600)
    assert app.api is not None
    held = threading.Event()

    async def go() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            body = {"rollouts": [{"input": "while held"}]}
            busy = asyncio.get_running_loop().run_in_executor(pipeline._executor, held.wait, 60)
            try:
                answer = await asyncio.wait_for(
                    client.post("/v1/agl/queues/rollouts/enqueue", json=body), 30
                )
                assert not busy.done()  # answered while the store thread was still held
            finally:
                held.set()
                await busy
            assert answer.status_code == 201, answer.text
            [queued] = answer.json()
            found = await client.get(
                "/v1/agl/rollouts", params={"rollout_id_in": queued["rollout_id"]}
            )
            assert [r["input"] for r in found.json()["items"]] == ["while held"]

    try:
        asyncio.run(go())
    finally:
        app.api.close()
        pipeline.close()
        store.close()
