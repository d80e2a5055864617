"""GenAI log records waiting in the outbox, on a real SQLite file and a hand-moved clock: a model
call held for them, joined with them, released after its wait, waiting given up when no record
ever comes, and records counted against the outbox's byte budget."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PB2Span

from lightning_otlp.forward.outbox import Outbox
from lightning_otlp.forward.waits import LOG_MEMORY, PRUNE_INTERVAL
from lightning_otlp.receiver.route import RoutingConfig, route

from .payloads import make_request, make_span
from .test_forward_logs import CHAT, WAIT, Call, Clock

SERVER = "http://127.0.0.1:9"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def outbox(tmp_path: Path, clock: Clock) -> Iterator[Outbox]:
    box = Outbox(
        str(tmp_path / "outbox.db"), SERVER, synchronous="OFF", log_wait=WAIT, clock=clock.time
    )
    box.open()
    yield box
    box.close()


def write(outbox: Outbox, *spans: PB2Span) -> None:
    outbox.write(route(make_request(list(spans)), RoutingConfig()))


def ready(outbox: Outbox) -> list[str]:
    """Names of the spans the next batch would send."""
    rows, _ = outbox.pending_batch(0, 100, 1 << 30)
    return sorted(PB2Span.FromString(r.span).name for r in rows)


def plain(name: str) -> PB2Span:
    return make_span(name, attributes={k: CHAT[k] for k in list(CHAT)[-2:]})


def test_a_call_is_held_until_its_response_record_comes(outbox: Outbox) -> None:
    call = Call("Hi?", "Hello.")
    write(outbox, call.span(), plain("tool"))
    assert outbox.held() == 1 and ready(outbox) == ["tool"]
    outbox.write_logs(call.logs(answer=False))
    assert ready(outbox) == ["tool"]  # the question alone does not release it
    outbox.write_logs(call.logs(question=False))
    assert ready(outbox) == ["chat fake-model", "tool"]
    assert outbox.status()["held_spans"] == 1  # released, kept until sent


def test_records_are_joined_onto_their_span_and_leave_with_it(outbox: Outbox) -> None:
    call = Call("2 + 2?", "4")
    assert outbox.write_logs(call.logs()) == 2
    write(outbox, call.span())
    assert outbox.held() == 1  # kept as a wait, released at once: its answer is here
    rows, _ = outbox.pending_batch(0, 100, 1 << 30)
    (row,) = rows
    sent = PB2Span.FromString(outbox.translated(row.span, row.resource_id))
    texts = {a.key: a.value.string_value for a in sent.attributes}
    assert texts["gen_ai.prompt.0.content"] == "2 + 2?"
    assert texts["gen_ai.completion.0.content"] == "4"
    outbox.delivered(rows)
    status = outbox.status()
    assert (status["held_spans"], status["pending_logs"], status["late_logs"]) == (0, 0, 0)
    assert outbox.held() == 0 and outbox.log_bytes() == 0
    # A record for it now is late: counted and dropped.
    assert outbox.write_logs(call.logs(answer=False)) == 0
    assert outbox.late_logs == 1 == outbox.status()["late_logs"]


def test_a_held_call_goes_after_its_wait(outbox: Outbox, clock: Clock) -> None:
    outbox.write_logs(Call("seen?", "yes").logs())  # records do reach this receiver
    call = Call("Slow?", "Never came.")
    write(outbox, call.span())
    assert ready(outbox) == []
    clock.now += WAIT - 0.001
    assert ready(outbox) == []
    clock.now += 0.001
    assert ready(outbox) == ["chat fake-model"]


def test_waiting_is_given_up_while_no_record_ever_came(outbox: Outbox, clock: Clock) -> None:
    first, second = Call("1?", "1."), Call("2?", "2.")
    write(outbox, first.span())
    clock.now += WAIT
    outbox.tend()  # a call waited its whole time, and no record has ever come
    assert outbox.status()["held_spans"] == 1 and ready(outbox) == ["chat fake-model"]
    rows, _ = outbox.pending_batch(0, 100, 1 << 30)
    outbox.delivered(rows)
    write(outbox, second.span())
    assert outbox.held() == 0 and ready(outbox) == ["chat fake-model"]  # not held
    outbox.delivered(outbox.pending_batch(0, 100, 1 << 30)[0])
    outbox.write_logs(Call("3?", "3.").logs())  # one comes: waiting resumes
    write(outbox, Call("4?", "4.").span())
    assert outbox.held() == 1 and ready(outbox) == []


def test_records_count_against_the_byte_budget_until_pruned(outbox: Outbox, clock: Clock) -> None:
    calls = [Call(f"question {i}" * 20, "answer") for i in range(5)]
    for call in calls:
        outbox.write_logs(call.logs())
    kept = outbox.log_bytes()
    assert kept > 5 * 200 and outbox.status()["pending_log_bytes"] == kept
    assert outbox.pending() == (0, 0)  # no span: the bytes are the records'
    clock.now += LOG_MEMORY + PRUNE_INTERVAL
    outbox.tend()
    assert outbox.log_bytes() == 0 and outbox.pruned_logs == 10
    assert outbox.status()["pruned_logs"] == 10


def test_counts_in_memory_match_the_file_after_a_restart(
    outbox: Outbox, clock: Clock, tmp_path: Path
) -> None:
    call, other = Call("Kept?", "Yes."), Call("Other?", "Also.")
    outbox.write_logs(other.logs())
    write(outbox, call.span())
    held, log_bytes = outbox.held(), outbox.log_bytes()
    outbox.close()
    again = Outbox(outbox.path, SERVER, synchronous="OFF", log_wait=WAIT, clock=clock.time)
    again.open()
    try:
        assert (again.held(), again.log_bytes()) == (held, log_bytes) == (1, log_bytes)
        assert ready(again) == []
    finally:
        again.close()
