"""Forwarding model calls whose messages come as GenAI log records, against the in-memory server
of ``test_forward_delivery.py``: a call waits for its records (in either order, across a
restart), a record after its span was sent is counted and dropped, and the outbox keeps no log
record for long. The outbox's clock is a test clock, so no test waits for real time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest as PB2ExportLogsServiceRequest,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord as PB2LogRecord

from lightning_otlp.forward.delivery import Delivery
from lightning_otlp.forward.outbox import Outbox
from lightning_otlp.forward.store import ForwardingStore
from lightning_otlp.forward.waits import LOG_MEMORY, PRUNE_INTERVAL
from lightning_otlp.receiver.route import RoutingConfig, route
from lightning_otlp.store.logs import log_rows
from lightning_otlp.translate.otlp import span_awaits_logs

from .payloads import any_value, key_values, make_request, make_span
from .test_forward_delivery import SERVER, FakeServer, _client, drain

WAIT = 5.0
ROLLOUT, ATTEMPT = "ro-00000000f0f0", "at-0000f0f0"
CHAT = {
    "gen_ai.operation.name": "chat",
    "gen_ai.system": "openai",
    "gen_ai.request.model": "fake-model",
    "agentlightning.rollout_id": ROLLOUT,
    "agentlightning.attempt_id": ATTEMPT,
}


class Clock:
    """The outbox's wall clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server() -> FakeServer:
    server = FakeServer()
    server.add_rollout(ROLLOUT, ATTEMPT)
    return server


@pytest.fixture
def outbox(tmp_path: Path, clock: Clock) -> Iterator[Outbox]:
    box = Outbox(
        str(tmp_path / "outbox.db"), SERVER, synchronous="OFF", log_wait=WAIT, clock=clock.time
    )
    box.open()
    yield box
    box.close()


class Call:
    """One chat call: its span (no messages on it) and its log records."""

    def __init__(self, question: str, answer: str) -> None:
        self.trace_id, self.span_id = os.urandom(16), os.urandom(8)
        self.question, self.answer = question, answer

    def span(self, **attributes: Any) -> Any:
        return make_span(
            "chat fake-model",
            trace_id=self.trace_id,
            span_id=self.span_id,
            attributes={**CHAT, **attributes},
        )

    def logs(self, *, question: bool = True, answer: bool = True, at: float = 0.0) -> Any:
        records = []
        if question:
            records.append(("gen_ai.user.message", {"content": self.question}))
        if answer:
            message = {"role": "assistant", "content": self.answer}
            choice = {"index": 0, "finish_reason": "stop", "message": message}
            records.append(("gen_ai.choice", choice))
        request = PB2ExportLogsServiceRequest()
        scope = request.resource_logs.add().scope_logs.add()
        for name, body in records:
            scope.log_records.append(
                PB2LogRecord(
                    event_name=name,
                    trace_id=self.trace_id,
                    span_id=self.span_id,
                    time_unix_nano=int(at * 1e9),
                    body=any_value(body),
                    attributes=key_values({"gen_ai.system": "openai"}),
                )
            )
        return log_rows(request).rows


def write(outbox: Outbox, *spans: Any) -> None:
    outbox.write(route(make_request(list(spans)), RoutingConfig()))


def sent(server: FakeServer, call: Call) -> dict[str, Any] | None:
    """The attributes the server holds for the call's span, or None."""
    found = server.spans.get((ROLLOUT, ATTEMPT, call.span_id.hex()))
    return None if found is None else dict(found["attributes"])


def has_text(attributes: dict[str, Any] | None, call: Call) -> bool:
    return (
        attributes is not None
        and attributes.get("gen_ai.prompt.0.content") == call.question
        and attributes.get("gen_ai.completion.0.content") == call.answer
    )


def log_rows_left(outbox: Outbox) -> int:
    with outbox.store.locked() as conn:
        count: int = conn.execute("SELECT COUNT(*) FROM span_logs").fetchone()[0]
    return count


def test_records_that_came_first_go_with_their_span_at_once(
    outbox: Outbox, server: FakeServer, clock: Clock
) -> None:
    call = Call("What is 2 + 2?", "4")
    assert outbox.write_logs(call.logs(at=clock.now)) == 2
    write(outbox, call.span())
    drain(Delivery(outbox, _client(server)))
    got = sent(server, call)
    assert has_text(got, call) and got is not None
    assert got["lightning_otlp.translated_from"] == "otel_genai"
    assert outbox.pending() == (0, 0) and outbox.held() == 0
    assert log_rows_left(outbox) == 0  # pruned with the span they went with
    assert outbox.status()["late_logs"] == 0


def test_a_call_waits_for_records_that_come_after_it(
    outbox: Outbox, server: FakeServer, clock: Clock
) -> None:
    call, other = Call("Hello?", "Hi."), Call("Ping?", "Pong.")
    plain = make_span("GET /weather", attributes={k: CHAT[k] for k in list(CHAT)[-2:]})
    write(outbox, call.span(), plain)
    delivery = Delivery(outbox, _client(server))
    drain(delivery)
    # The plain span went at once; the call waits, and so does its rollout's status.
    assert sent(server, call) is None and server.received == 1
    assert outbox.status()["held_spans"] == 1
    clock.now += WAIT / 2
    outbox.write_logs(call.logs(answer=False, at=clock.now))
    drain(delivery)
    assert sent(server, call) is None  # the question alone does not release it
    outbox.write_logs(call.logs(question=False, at=clock.now))
    drain(delivery)
    assert has_text(sent(server, call), call)
    assert outbox.pending() == (0, 0) and outbox.held() == 0 and log_rows_left(outbox) == 0
    # Records of a call that is still to come stay for it.
    outbox.write_logs(other.logs(at=clock.now))
    drain(delivery)
    assert log_rows_left(outbox) == 2
    write(outbox, other.span())
    drain(delivery)
    assert has_text(sent(server, other), other) and server.received == 3


def test_a_held_call_survives_a_restart(
    outbox: Outbox, server: FakeServer, clock: Clock, tmp_path: Path
) -> None:
    call = Call("Still there?", "Yes.")
    write(outbox, call.span())
    drain(Delivery(outbox, _client(server)))
    outbox.close()  # what a kill -9 leaves: the committed outbox file
    again = Outbox(outbox.path, SERVER, synchronous="OFF", log_wait=WAIT, clock=clock.time)
    again.open()
    try:
        delivery = Delivery(again, _client(server))
        drain(delivery)
        assert again.held() == 1 and server.received == 0
        again.write_logs(call.logs(at=clock.now))
        drain(delivery)
        assert has_text(sent(server, call), call) and again.held() == 0
    finally:
        again.close()


def test_records_after_the_wait_are_counted_and_dropped(tmp_path: Path, clock: Clock) -> None:
    server = FakeServer()
    server.add_rollout(ROLLOUT, ATTEMPT)
    store = ForwardingStore(
        SERVER,
        str(tmp_path / "store.db"),
        forward=False,
        log_wait=WAIT,
        client=lambda: server,
        clock=clock.time,
    )
    store.open()
    try:
        earlier, call = Call("Earlier?", "Yes."), Call("Late?", "Very.")
        store.write_logs(earlier.logs(at=clock.now))  # log records do reach this receiver
        store.write(route(make_request([call.span()]), RoutingConfig()))
        delivery = Delivery(store.outbox, _client(server))
        drain(delivery)
        assert sent(server, call) is None
        clock.now += WAIT
        drain(delivery)
        got = sent(server, call)
        assert got is not None and not has_text(got, call)  # sent as it was
        assert store.write_logs(call.logs(at=clock.now)) == 0
        metrics = {m.name: m.value for m in store.metrics()}
        assert metrics["lightning_otlp_late_logs_total"] == 2
        assert metrics["lightning_otlp_outbox_held_spans"] == 0
        # The earlier call's records stay for its span, still to come.
        assert store.status()["late_logs"] == 2 and log_rows_left(store.outbox) == 2
        # The memory of sent calls is bounded too: much later, a record is only unmatched.
        clock.now += LOG_MEMORY + PRUNE_INTERVAL
        store.outbox.tend()
        assert store.write_logs(call.logs(answer=False, at=clock.now)) == 1
        assert store.status()["late_logs"] == 2
    finally:
        store.close()


def test_a_record_that_comes_while_its_span_is_sent_is_counted(
    outbox: Outbox, server: FakeServer, clock: Clock
) -> None:
    call = Call("In flight?", "Just.")
    outbox.write_logs(call.logs(answer=False, at=clock.now))
    write(outbox, call.span())
    clock.now += WAIT
    delivery = Delivery(outbox, _client(server))
    delivery.step()  # read, encoded with the question only, and sent
    outbox.write_logs(call.logs(question=False, at=clock.now))
    drain(delivery)
    assert sent(server, call) is not None
    assert outbox.late_logs == 1 and log_rows_left(outbox) == 0


def test_records_whose_span_never_comes_are_pruned_after_a_while(
    outbox: Outbox, server: FakeServer, clock: Clock
) -> None:
    lost, held, later = Call("Lost?", "Yes."), Call("Held?", "Yes."), Call("Later?", "Yes.")
    # Old by their own clock, but just here: their span may still come.
    outbox.write_logs(lost.logs(at=clock.now - 10 * LOG_MEMORY))
    write(outbox, held.span())
    outbox.write_logs(held.logs(question=True, answer=False, at=clock.now))
    delivery = Delivery(outbox, _client(server))
    drain(delivery)
    assert log_rows_left(outbox) == 3 and outbox.status()["pruned_logs"] == 0
    clock.now += LOG_MEMORY / 2
    outbox.write_logs(later.logs(at=clock.now))
    clock.now += LOG_MEMORY / 2 + PRUNE_INTERVAL
    outbox.tend()
    # The lost call's records go; a held span's stay with it; the later call's are young.
    assert log_rows_left(outbox) == 3 and outbox.status()["pruned_logs"] == 2
    assert outbox.pruned_logs == 2
    clock.now += LOG_MEMORY
    outbox.tend()
    assert log_rows_left(outbox) == 1 and outbox.pruned_logs == 4
    drain(delivery)  # long past its wait, the held span goes with its question
    assert sent(server, held) is not None and log_rows_left(outbox) == 0


def test_a_receiver_that_gets_no_records_stops_waiting_until_one_comes(
    outbox: Outbox, server: FakeServer, clock: Clock
) -> None:
    first, second, third = Call("1?", "1."), Call("2?", "2."), Call("3?", "3.")
    delivery = Delivery(outbox, _client(server))
    write(outbox, first.span())
    drain(delivery)
    assert server.received == 0
    clock.now += WAIT
    drain(delivery)
    assert sent(server, first) is not None
    write(outbox, second.span())  # no log record has ever come: no more waiting
    drain(delivery)
    assert sent(server, second) is not None and outbox.held() == 0
    outbox.write_logs(first.logs(at=clock.now))  # one does: waiting resumes
    write(outbox, third.span())
    drain(delivery)
    assert sent(server, third) is None and outbox.held() == 1
    outbox.write_logs(third.logs(at=clock.now))
    drain(delivery)
    assert has_text(sent(server, third), third)


def test_a_released_call_is_sent_once_while_later_batches_are_in_flight(
    outbox: Outbox, server: FakeServer, clock: Clock
) -> None:
    call = Call("Among many?", "Yes.")
    others = [
        make_span(f"step {i}", attributes={k: CHAT[k] for k in list(CHAT)[-2:]}) for i in range(35)
    ]
    write(outbox, call.span(), *others)
    delivery = Delivery(outbox, _client(server), batch_spans=10)
    assert delivery.step()  # the first ten others are in flight
    outbox.write_logs(call.logs(at=clock.now))
    drain(delivery)
    assert has_text(sent(server, call), call)
    assert server.received == len(server.spans) == 36
    assert outbox.status()["forwarded_spans"] == 36 and outbox.pending() == (0, 0)


def test_a_rollout_status_waits_for_its_held_calls(
    outbox: Outbox, server: FakeServer, clock: Clock
) -> None:
    call = Call("Last call?", "Done.")
    root = make_span("agent run", attributes={k: CHAT[k] for k in list(CHAT)[-2:]})
    write(outbox, call.span(), root)
    with outbox.store.locked() as conn:  # the agent's run ends, as its rollout's status says
        conn.execute("UPDATE attempts SET status = 'succeeded'")
        conn.execute("UPDATE rollouts SET status = 'succeeded'")
    delivery = Delivery(outbox, _client(server))
    drain(delivery)
    assert server.updates == []
    outbox.write_logs(call.logs(at=clock.now))
    drain(delivery)
    assert has_text(sent(server, call), call)
    assert (ROLLOUT, "succeeded") in server.updates


def test_spans_written_with_no_wait_are_never_held(tmp_path: Path, server: FakeServer) -> None:
    box = Outbox(str(tmp_path / "nowait.db"), SERVER, synchronous="OFF", log_wait=0)
    box.open()
    try:
        call = Call("Now?", "Now.")
        write(box, call.span())
        drain(Delivery(box, _client(server)))
        assert sent(server, call) is not None and box.held() == 0
    finally:
        box.close()


@pytest.mark.parametrize(
    ("attributes", "waits"),
    [
        ({"gen_ai.operation.name": "chat"}, True),  # openai-v2's default: messages in records
        ({"llm.request.type": "chat"}, True),  # OpenLLMetry with its events on
        ({"gen_ai.operation.name": "embeddings"}, False),
        ({"gen_ai.operation.name": "chat", "gen_ai.input.messages": "[]"}, False),
        ({"llm.request.type": "chat", "gen_ai.prompt.0.content": "Hi"}, False),
        ({"openinference.span.kind": "LLM", "gen_ai.operation.name": "chat"}, False),
        ({"ai.operationId": "ai.generateText.doGenerate", "gen_ai.operation.name": "chat"}, False),
        ({"http.request.method": "GET"}, False),
    ],
)
def test_which_spans_wait_for_log_records(attributes: dict[str, Any], waits: bool) -> None:
    assert span_awaits_logs(make_span("call", attributes=attributes).SerializeToString()) is waits


def test_log_records_count_against_the_outbox_byte_limit(tmp_path: Path, clock: Clock) -> None:
    """Records whose spans never come fill the outbox's byte limit like spans do: refused
    (retryable) once full, shown by ``status`` and /metrics, and room again once pruned."""
    from lightning_otlp.errors import StoreUnavailable

    server = FakeServer()
    server.add_rollout(ROLLOUT, ATTEMPT)
    store = ForwardingStore(
        SERVER,
        str(tmp_path / "store.db"),
        forward=False,
        log_wait=WAIT,
        client=lambda: server,
        max_outbox_bytes=4096,
        clock=clock.time,
    )
    store.open()
    try:
        kept = 0
        with pytest.raises(StoreUnavailable, match="outbox full"):
            for i in range(1000):
                kept += store.write_logs(Call(f"question {i}" * 10, "answer").logs(at=clock.now))
        status = store.status()
        assert status["pending_logs"] == kept > 0
        assert status["pending_log_bytes"] >= 4096  # full: one request past the limit at most
        metrics = {m.name: m.value for m in store.metrics()}
        assert metrics["lightning_otlp_outbox_log_bytes"] == status["pending_log_bytes"]
        # spans are refused too: the limit is one for both
        with pytest.raises(StoreUnavailable, match="outbox full"):
            store.write(route(make_request([Call("a", "b").span()]), RoutingConfig()))
        # records that never met their span are pruned, and the room comes back
        clock.now += LOG_MEMORY + PRUNE_INTERVAL
        store.outbox.tend()
        assert store.status()["pending_log_bytes"] == 0 == store.outbox.log_bytes()
        assert store.write_logs(Call("again", "yes").logs(at=clock.now)) == 2
    finally:
        store.close()
