"""The stock Python OTLP exporters (gRPC and HTTP/protobuf) against a real ``lightning-otlp serve``.

The agent runs in its own process (tests/clients/python_agent.py) with a ``TracerProvider`` and
``BatchSpanProcessor``, so ``OTEL_RESOURCE_ATTRIBUTES`` is read the way any application reads it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceResponse as PB2ExportTraceServiceResponse,
)

from lightning_otlp import ids

from .agents import (
    SpanDoc,
    assert_sequence_per_request,
    assert_stored_as_sent,
    assert_valid_for_agl,
    rollouts_by_id,
    run_python_agent,
)
from .payloads import make_request, make_span
from .support import ReceiverProcess, module_receiver

pytestmark = pytest.mark.e2e

EXPORTERS = ("grpc", "http")
TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReceiverProcess]:
    """One receiver with default settings for the whole module; each case has its own ids."""
    yield from module_receiver(tmp_path_factory, "e2e-python")


def _check_explicit(
    receiver: ReceiverProcess, sent: list[SpanDoc], rollout_id: str, attempt_id: str
) -> None:
    stored = receiver.spans(rollout_id)
    assert {s["attempt_id"] for s in stored} == {attempt_id}
    assert_stored_as_sent(sent, stored)
    # One request from the batch processor: sequence ids 1..n, in start-time order.
    assert_sequence_per_request(stored, sent)
    rollout = rollouts_by_id(receiver, rollout_id)[rollout_id]
    assert rollout["status"] == "running"
    assert rollout["start_time"] == min(s["start_time"] for s in stored)
    assert rollout["attempt"]["attempt_id"] == attempt_id
    assert rollout["attempt"]["sequence_id"] == 1
    assert rollout["attempt"]["status"] == "running"
    assert_valid_for_agl(stored, [rollout])


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_ids_from_otel_resource_attributes(receiver: ReceiverProcess, exporter: str) -> None:
    rollout_id, attempt_id = ids.new_rollout_id(), ids.new_attempt_id()
    env = {
        "OTEL_RESOURCE_ATTRIBUTES": (
            f"agentlightning.rollout_id={rollout_id},agentlightning.attempt_id={attempt_id},"
            "deployment.environment=test"
        )
    }
    sent = run_python_agent(receiver, exporter, env=env)
    assert len(sent) == 8
    assert sent[0]["resource"]["agentlightning.rollout_id"] == rollout_id
    assert sent[0]["resource"]["deployment.environment"] == "test"
    _check_explicit(receiver, sent, rollout_id, attempt_id)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_ids_from_span_attributes(receiver: ReceiverProcess, exporter: str) -> None:
    rollout_id, attempt_id = ids.new_rollout_id(), ids.new_attempt_id()
    sent = run_python_agent(receiver, exporter, "--span-ids", f"{rollout_id},{attempt_id}")
    assert all(s["attributes"]["agentlightning.rollout_id"] == rollout_id for s in sent)
    _check_explicit(receiver, sent, rollout_id, attempt_id)


def test_rollout_id_alone_shares_the_latest_attempt(receiver: ReceiverProcess) -> None:
    rollout_id = ids.new_rollout_id()
    env = {"OTEL_RESOURCE_ATTRIBUTES": f"agentlightning.rollout_id={rollout_id}"}
    # Two processes of one rollout, neither naming an attempt: both land in the one attempt
    # the receiver created on first sight, sequence ids continuing across requests.
    first = run_python_agent(receiver, "grpc", env=env)
    second = run_python_agent(receiver, "http", env=env)
    stored = receiver.spans(rollout_id)
    assert_stored_as_sent(first + second, stored)
    assert {s["attempt_id"] for s in stored} == {ids.attempt_id_for(rollout_id, 1)}
    assert_sequence_per_request(stored, first, second)
    rollout = rollouts_by_id(receiver, rollout_id)[rollout_id]
    assert rollout["attempt"]["attempt_id"] == ids.attempt_id_for(rollout_id, 1)
    assert_valid_for_agl(stored, [rollout])


@pytest.mark.parametrize(
    ("exporter", "compression"), [("grpc", "gzip"), ("http", "gzip"), ("http", "deflate")]
)
def test_compressed_exports(receiver: ReceiverProcess, exporter: str, compression: str) -> None:
    rollout_id, attempt_id = ids.new_rollout_id(), ids.new_attempt_id()
    sent = run_python_agent(
        receiver,
        exporter,
        "--compression",
        compression,
        "--span-ids",
        f"{rollout_id},{attempt_id}",
    )
    _check_explicit(receiver, sent, rollout_id, attempt_id)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_no_ids_one_rollout_per_trace(receiver: ReceiverProcess, exporter: str) -> None:
    sent = run_python_agent(receiver, exporter, "--traces", "3")
    by_trace: dict[str, list[SpanDoc]] = defaultdict(list)
    for span in sent:
        by_trace[span["trace_id"]].append(span)
    assert len(by_trace) == 3
    expected = {ids.rollout_id_for_trace(trace_id): trace_id for trace_id in by_trace}
    assert len(expected) == 3
    rollouts = rollouts_by_id(receiver, *expected)
    all_stored = []
    for rollout_id, trace_id in expected.items():
        stored = receiver.spans(rollout_id)
        assert_stored_as_sent(by_trace[trace_id], stored)
        assert_sequence_per_request(stored, by_trace[trace_id])
        rollout = rollouts[rollout_id]
        assert rollout["metadata"] == {"lightning_otlp": {"origin": "trace", "trace_id": trace_id}}
        assert rollout["attempt"]["attempt_id"] == ids.attempt_id_for(rollout_id, 1)
        assert {s["attempt_id"] for s in stored} == {rollout["attempt"]["attempt_id"]}
        all_stored += stored
    assert_valid_for_agl(all_stored, list(rollouts.values()))


def test_rollout_key_one_rollout_per_session(
    start_receiver: Callable[..., ReceiverProcess],
) -> None:
    receiver = start_receiver("--rollout-key", "session.id")
    sessions = ("--session", "sess-alpha", "--session", "sess-beta", "--traces", "4")
    # Both exporters, one after the other: the same session lands in the same rollout.
    runs = [
        run_python_agent(receiver, "grpc", *sessions),
        run_python_agent(receiver, "http", *sessions),
    ]
    by_session: dict[str, list[list[SpanDoc]]] = defaultdict(lambda: [[], []])
    for run, sent in enumerate(runs):
        for span in sent:
            by_session[span["attributes"]["session.id"]][run].append(span)
    expected = {ids.rollout_id_for_key("session.id", value): value for value in by_session}
    rollouts = rollouts_by_id(receiver, *expected)
    assert len(receiver.rollouts()) == 2
    all_stored = []
    for rollout_id, session in expected.items():
        stored = receiver.spans(rollout_id)
        first, second = by_session[session]
        assert_stored_as_sent(first + second, stored)
        assert len(stored) == 16  # 2 traces x 4 spans from each of the two runs
        assert_sequence_per_request(stored, first, second)
        assert rollouts[rollout_id]["metadata"] == {
            "lightning_otlp": {"origin": "key", "session.id": session}
        }
        all_stored += stored
    assert_valid_for_agl(all_stored, list(rollouts.values()))


def test_fallback_reject_counts_partial_success(
    start_receiver: Callable[..., ReceiverProcess],
) -> None:
    receiver = start_receiver("--fallback", "reject")
    rollout_id, attempt_id = ids.new_rollout_id(), ids.new_attempt_id()
    routed = {"agentlightning.rollout_id": rollout_id, "agentlightning.attempt_id": attempt_id}
    request = make_request(
        [make_span("unrouted", attributes={"n": i}) for i in range(3)]
        + [make_span("routed", attributes={**routed, "n": i}) for i in range(2)]
    )

    reply = httpx.post(
        receiver.traces_url,
        content=request.SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
    )
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/x-protobuf"
    response = PB2ExportTraceServiceResponse.FromString(reply.content)
    assert response.partial_success.rejected_spans == 3
    assert "reject" in response.partial_success.error_message
    assert [s["name"] for s in receiver.spans(rollout_id)] == ["routed", "routed"]

    # The same over gRPC, as a raw unary call.
    with grpc.insecure_channel(receiver.grpc_target) as channel:
        export = channel.unary_unary(
            TRACE_EXPORT,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=PB2ExportTraceServiceResponse.FromString,
        )
        unrouted = make_request([make_span("unrouted-grpc") for _ in range(4)])
        grpc_response = export(unrouted, timeout=10)
    assert grpc_response.partial_success.rejected_spans == 4

    # A stock exporter treats partial success as delivered: it neither fails nor retries.
    sent = run_python_agent(receiver, "grpc", "--traces", "1")
    assert len(sent) == 4
    stored_ids = {s["span_id"] for s in receiver.spans()}
    assert len(stored_ids) == 2
    assert not stored_ids & {s["span_id"] for s in sent}
    assert_valid_for_agl(receiver.spans(), list(rollouts_by_id(receiver, rollout_id).values()))
