"""The delivery loop against an in-memory LightningStore server: exactly once, bisecting, the id
mapping and status mirroring, in milliseconds (``test_forward.py`` runs the real ``agl store``).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest as PB2ExportTraceServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue as PB2AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Status as PB2Status

from lightning_otlp.forward.client import LightningClient, ServerError
from lightning_otlp.forward.delivery import Delivery
from lightning_otlp.forward.outbox import Outbox
from lightning_otlp.forward.store import ForwardingStore
from lightning_otlp.receiver.route import RoutingConfig, route

from .payloads import genai_request, make_request, make_span

SERVER = "http://fake-agl"


def _value(value: PB2AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


class FakeServer:
    """A LightningStore server in memory, as strict as ``agl store`` where the forwarder cares.

    ``lose`` makes the next call of a method do its work and then fail as if its answer were
    lost; ``refuse`` names a span that makes any export carrying it fail for good (400).
    """

    def __init__(self) -> None:
        self.rollout_records: dict[str, dict[str, Any]] = {}
        self.attempt_records: dict[str, list[dict[str, Any]]] = {}
        self.spans: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.received = 0  # spans received, repeats included
        self.exports: list[int] = []  # spans per export request, refused ones included
        self.refused: list[int] = []  # spans per export refused for good
        self.updates: list[tuple[str, ...]] = []
        self.refused_updates: list[tuple[str, ...]] = []
        self.lose: set[str] = set()
        self.refuse: str | None = None
        self.refuse_updates = False
        self.clock = 1000.0
        self._ids = 0

    # -- the client Protocol ---------------------------------------------------------------

    def health(self) -> bool:
        return True

    def rollouts(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        return {i: self._attempted(i) for i in set(ids) if i in self.rollout_records}

    def recent_rollouts(self, offset: int, limit: int) -> list[dict[str, Any]]:
        newest = sorted(self.rollout_records, key=lambda i: -self.rollout_records[i]["start_time"])
        return [self._attempted(i) for i in newest[offset : offset + limit]]

    def create_rollout(self, body: dict[str, Any]) -> dict[str, Any]:
        self._ids += 1
        created = self.add_rollout(f"ro-{self._ids:012x}", f"at-{self._ids:08x}", **body)
        self._maybe_lose("create_rollout")
        return created

    def attempts(self, rollout_id: str) -> list[dict[str, Any]]:
        return list(self.attempt_records[rollout_id])

    def create_attempt(self, rollout_id: str) -> dict[str, Any]:
        self._ids += 1
        self._add_attempt(rollout_id, f"at-{self._ids:08x}")
        self._maybe_lose("create_attempt")
        return self._attempted(rollout_id)

    def update_rollout(self, rollout_id: str, status: str) -> None:
        self._maybe_refuse_update((rollout_id, status))
        self.rollout_records[rollout_id]["status"] = status
        self.updates.append((rollout_id, status))

    def update_attempt(self, rollout_id: str, attempt_id: str, status: str) -> None:
        self._maybe_refuse_update((rollout_id, attempt_id, status))
        for attempt in self.attempt_records[rollout_id]:
            if attempt["attempt_id"] == attempt_id:
                attempt["status"] = status
        self.updates.append((rollout_id, attempt_id, status))

    def export(self, body: bytes) -> None:
        request = PB2ExportTraceServiceRequest.FromString(body)
        incoming = []
        for rs in request.resource_spans:
            resource = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
            for ss in rs.scope_spans:
                for span in ss.spans:
                    attrs = {**resource, **{kv.key: _value(kv.value) for kv in span.attributes}}
                    incoming.append((span, attrs))
        self.exports.append(len(incoming))
        if any(span.name == self.refuse for span, _ in incoming):
            self.refused.append(len(incoming))
            raise ServerError(400, "POST /v1/traces: a span it cannot take")
        for _, attrs in incoming:  # like agl: an unknown rollout fails the whole request
            if attrs["agentlightning.rollout_id"] not in self.rollout_records:
                raise ServerError(500, "POST /v1/traces: rollout not found")
        for span, attrs in incoming:
            key = (
                attrs["agentlightning.rollout_id"],
                attrs["agentlightning.attempt_id"],
                span.span_id.hex(),
            )
            self.spans.setdefault(
                key,
                {
                    "name": span.name,
                    "sequence_id": attrs["agentlightning.span_sequence_id"],
                    "attributes": attrs,
                },
            )
        self.received += len(incoming)
        self._maybe_lose("export")

    def close(self) -> None:
        pass

    # -- test helpers ----------------------------------------------------------------------

    def add_rollout(
        self, rollout_id: str, attempt_id: str, **body: Any
    ) -> dict[str, Any]:  # a runner's rollout
        self.clock += 1
        self.rollout_records[rollout_id] = {
            "rollout_id": rollout_id,
            "input": body.get("input"),
            "mode": body.get("mode"),
            "metadata": body.get("metadata"),
            "status": "preparing",
            "start_time": self.clock,
        }
        self.attempt_records[rollout_id] = []
        self._add_attempt(rollout_id, attempt_id)
        return self._attempted(rollout_id)

    def forget(self) -> None:
        """A restart of an in-memory server."""
        self.rollout_records.clear()
        self.attempt_records.clear()
        self.spans.clear()

    def linked(self, local_rollout_id: str) -> list[str]:
        return [
            i
            for i, r in self.rollout_records.items()
            if ((r["metadata"] or {}).get("lightning_otlp") or {}).get("rollout_id")
            == local_rollout_id
        ]

    def _add_attempt(self, rollout_id: str, attempt_id: str) -> None:
        attempts = self.attempt_records[rollout_id]
        attempts.append(
            {"attempt_id": attempt_id, "sequence_id": len(attempts) + 1, "status": "preparing"}
        )

    def _attempted(self, rollout_id: str) -> dict[str, Any]:
        return {**self.rollout_records[rollout_id], "attempt": self.attempt_records[rollout_id][-1]}

    def _maybe_refuse_update(self, update: tuple[str, ...]) -> None:
        if self.refuse_updates:
            self.refused_updates.append(update)
            raise ServerError(400, "no such status")

    def _maybe_lose(self, method: str) -> None:
        if method in self.lose:
            self.lose.discard(method)
            raise ConnectionError(f"{method}: the answer was lost")


def _client(server: FakeServer) -> LightningClient:
    return server  # the fake implements the Protocol (checked by mypy here)


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    # genai_request's spans are model calls with no messages on them: they would wait for log
    # records (test_forward_logs.py); here they go at once.
    box = Outbox(str(tmp_path / "outbox.db"), SERVER, synchronous="OFF", log_wait=0)
    box.open()
    yield box
    box.close()


def reopen(outbox: Outbox) -> Outbox:
    """The same outbox file in a new process (what a crash leaves behind)."""
    outbox.close()
    again = Outbox(outbox.path, SERVER, synchronous="OFF", log_wait=outbox.log_wait)
    again.open()
    return again


def drain(delivery: Delivery, steps: int = 200) -> None:
    """Step until idle; a failure propagates, as it would into the loop's backoff."""
    for _ in range(steps):
        if not delivery.step():
            return
    raise AssertionError("delivery did not settle")


def write(outbox: Outbox, count: int, *, rollouts: int = 2, seed: int = 1) -> None:
    outbox.write(route(genai_request(count, rollouts=rollouts, seed=seed), RoutingConfig()))


def test_spans_reach_created_rollouts_with_server_ids_and_sequence_ids(
    outbox: Outbox, server: FakeServer
) -> None:
    write(outbox, 25, rollouts=2)
    stored = {s["span_id"]: s["sequence_id"] for s in outbox.store.spans()}
    delivery = Delivery(outbox, _client(server), batch_spans=10)
    drain(delivery)
    status = outbox.status()
    assert (status["pending_spans"], status["forwarded_spans"]) == (0, 25)
    assert status["rollouts_created"] == 2 and status["forwarded_requests"] == 3
    assert len(server.spans) == server.received == 25
    local = sorted({r["rollout_id"] for r in outbox.store.rollouts()})
    for rollout_id in local:
        (server_rollout,) = server.linked(rollout_id)
        sent = {k[2]: v["sequence_id"] for k, v in server.spans.items() if k[0] == server_rollout}
        assert sent == {span_id: stored[span_id] for span_id in sent}  # the stored ones, as is
        attempt = server.attempt_records[server_rollout]
        assert len(attempt) == 1  # the created rollout's own first attempt was used
        assert {k[1] for k in server.spans if k[0] == server_rollout} == {attempt[0]["attempt_id"]}
    assert server.exports == [10, 10, 5]


@pytest.mark.parametrize("crash", [False, True], ids=["retried", "after-a-crash"])
def test_a_batch_in_doubt_is_sent_again_and_counted_once(
    outbox: Outbox, server: FakeServer, crash: bool
) -> None:
    write(outbox, 30)
    delivery = Delivery(outbox, _client(server), batch_spans=10)
    delivery.step()  # first batch sent
    server.lose.add("export")  # the second's answer lost: the server has it, the outbox can't know
    with pytest.raises(ConnectionError):
        drain(delivery)
    assert outbox.status()["pending_spans"] == 20  # the first batch counted, the second in doubt
    if crash:
        delivery.close()
        outbox = reopen(outbox)
        delivery = Delivery(outbox, _client(server), batch_spans=10)
    drain(delivery)
    status = outbox.status()
    assert (status["pending_spans"], status["forwarded_spans"]) == (0, 30)
    assert server.received == 40  # the batch in doubt went twice ...
    assert len(server.spans) == 30  # ... and the server kept it once
    assert len(server.rollout_records) == 2  # the mapping survived (the crash)


def test_a_refused_batch_is_bisected_down_to_the_span_set_aside(
    outbox: Outbox, server: FakeServer
) -> None:
    ids = {"agentlightning.rollout_id": "ro-00000000000a", "agentlightning.attempt_id": "at-1"}
    spans = [
        make_span("poison" if i == 6 else f"span-{i}", attributes=ids, start_ns=1_000 + i)
        for i in range(16)
    ]
    outbox.write(route(make_request(spans), RoutingConfig()))
    server.refuse = "poison"
    delivery = Delivery(outbox, _client(server), batch_spans=16)
    drain(delivery)
    status = outbox.status()
    assert (status["pending_spans"], status["rejected_spans"]) == (0, 1)
    assert status["forwarded_spans"] == 15
    assert "refused for good" in status["last_error"]
    assert sorted(s["name"] for s in server.spans.values()) == sorted(
        f"span-{i}" for i in range(16) if i != 6
    )
    # Halved at each refusal (grown back by each delivery between), down to the one span.
    assert server.refused[:2] == [16, 8] and server.refused[-1] == 1
    assert all(b <= a for a, b in zip(server.refused, server.refused[1:], strict=False))
    assert delivery.limit == 16  # back to full batches
    with sqlite3.connect(outbox.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM forward_rejected").fetchone() == (1,)


def test_a_rollout_creation_in_doubt_is_found_again_by_its_link(
    outbox: Outbox, server: FakeServer
) -> None:
    write(outbox, 4, rollouts=1)
    server.lose.add("create_rollout")
    delivery = Delivery(outbox, _client(server), batch_spans=10)
    with pytest.raises(ConnectionError):
        drain(delivery)
    delivery.close()
    outbox = reopen(outbox)  # the process stopped with the creation in doubt
    drain(Delivery(outbox, _client(server), batch_spans=10))
    assert len(server.rollout_records) == 1  # no second rollout for the same spans
    assert len(server.spans) == 4
    assert outbox.status()["rollouts_created"] == 1


def test_an_attempt_creation_in_doubt_is_found_again_by_count(
    outbox: Outbox, server: FakeServer
) -> None:
    # A runner's rollout, and spans for an attempt of it the server has not seen.
    server.add_rollout("ro-00000000000b", "at-00000001")
    write(outbox, 3, rollouts=1, seed=0)  # seed 0: ro-000000000000
    server.add_rollout("ro-000000000000", "at-runner1")
    server.lose.add("create_attempt")
    delivery = Delivery(outbox, _client(server), batch_spans=10)
    with pytest.raises(ConnectionError):
        drain(delivery)
    drain(delivery)
    attempts = server.attempt_records["ro-000000000000"]
    assert len(attempts) == 2  # the runner's, and one made here (not two)
    assert {k[1] for k in server.spans} == {attempts[1]["attempt_id"]}
    assert outbox.status()["rollouts_created"] == 0  # forwarded under the runner's rollout


def test_spans_for_a_runners_rollout_keep_its_ids(outbox: Outbox, server: FakeServer) -> None:
    write(outbox, 5, rollouts=1, seed=0)
    server.add_rollout("ro-000000000000", "at-00000000")  # genai_request's first attempt id
    drain(Delivery(outbox, _client(server), batch_spans=10))
    assert {k[:2] for k in server.spans} == {("ro-000000000000", "at-00000000")}
    assert len(server.attempt_records["ro-000000000000"]) == 1
    assert outbox.status()["rollouts_created"] == 0


def test_rollouts_the_server_forgot_are_created_again(outbox: Outbox, server: FakeServer) -> None:
    write(outbox, 10, rollouts=1)
    delivery = Delivery(outbox, _client(server), batch_spans=10)
    drain(delivery)
    (first,) = server.rollout_records
    server.forget()  # the server restarted
    write(outbox, 10, rollouts=1, seed=1)  # more spans for the same local rollout
    drain(delivery)
    (second,) = server.rollout_records
    assert second != first
    assert len(server.spans) == 10
    status = outbox.status()
    assert status["rollouts_recreated"] == 1 and status["rollouts_created"] == 2
    assert status["forwarded_spans"] == 20


def test_local_status_changes_are_mirrored(outbox: Outbox, server: FakeServer) -> None:
    write(outbox, 4, rollouts=2)
    delivery = Delivery(outbox, _client(server), batch_spans=10)
    drain(delivery)
    assert server.updates == []  # created as running; nothing to mirror yet
    done = []
    for (rollout_id, attempt_id), code in zip(
        sorted((r["rollout_id"], r["attempt"]["attempt_id"]) for r in outbox.store.rollouts()),
        (PB2Status.STATUS_CODE_OK, PB2Status.STATUS_CODE_ERROR),
        strict=True,
    ):
        span = make_span(
            "agentlightning.rollout",
            attributes={
                "agentlightning.rollout_id": rollout_id,
                "agentlightning.attempt_id": attempt_id,
            },
        )
        span.status.code = code
        done.append(span)
    outbox.write(route(make_request(done), RoutingConfig()))
    drain(delivery)
    statuses = sorted(u[-1] for u in server.updates)
    assert statuses == ["failed", "failed", "succeeded", "succeeded"]
    assert outbox.status()["status_updates"] == 4
    drain(delivery)
    assert len(server.updates) == 4  # mirrored once


def test_a_status_update_refused_for_good_is_not_retried(
    outbox: Outbox, server: FakeServer
) -> None:
    write(outbox, 2, rollouts=1)
    delivery = Delivery(outbox, _client(server), batch_spans=10)
    drain(delivery)
    server.refuse_updates = True
    with sqlite3.connect(outbox.path) as conn:
        conn.execute("UPDATE attempts SET status = 'succeeded'")
        conn.execute("UPDATE rollouts SET status = 'succeeded'")
    drain(delivery)
    drain(delivery)
    assert len(server.refused_updates) == 2  # one try each, then left alone


def outbox_gauges(store: ForwardingStore) -> tuple[float, float]:
    values = {m.name: m.value for m in store.metrics()}
    return values["lightning_otlp_outbox_spans"], values["lightning_otlp_outbox_bytes"]


def test_forwarding_store_delivers_on_its_thread_and_reports(tmp_path: Path) -> None:
    server = FakeServer()
    store = ForwardingStore(
        SERVER, str(tmp_path / "store.db"), max_backoff=0.05, client=lambda: server, log_wait=0
    )
    store.open()
    try:
        store.write(route(genai_request(12, rollouts=3), RoutingConfig()))
        assert outbox_gauges(store)[0] in (0, 12)  # the thread may have delivered already
        for _ in range(200):
            if store.status()["forwarded_spans"] == 12:
                break
            time.sleep(0.01)
        status = store.status()
        assert status["forwarded_spans"] == 12 and status["forwarding"] is True
        assert outbox_gauges(store) == (0, 0)
        assert len(server.spans) == 12
    finally:
        store.close()


def test_a_full_outbox_refuses_with_a_retry_hint(tmp_path: Path) -> None:
    from lightning_otlp.errors import StoreUnavailable

    store = ForwardingStore(SERVER, str(tmp_path / "full.db"), max_outbox_spans=10, forward=False)
    store.open()
    try:
        store.write(route(genai_request(8), RoutingConfig()))
        with pytest.raises(StoreUnavailable) as full:
            store.write(route(genai_request(8, seed=2), RoutingConfig()))
        assert full.value.retry_after == 2
        assert store.status()["pending_spans"] == 8
    finally:
        store.close()
