"""End to end, faults: ``agl store`` restarted mid-stream, a receiver killed while forwarding, a
full outbox, bindings across a restart, spans the server refuses for good. Every acknowledged
span is delivered exactly once."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest as PB2ExportTraceServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceResponse as PB2ExportTraceServiceResponse,
)

from lightning_otlp.forward.status import store_status
from lightning_otlp.forward.store import ForwardingStore
from lightning_otlp.receiver.route import RoutingConfig, route

from .forwarding import (
    AglServer,
    cli_status,
    drained,
    identities,
    local_rollouts,
    post,
    sent_identities,
)
from .payloads import genai_request, make_request, make_span
from .support import ReceiverProcess, validate_with_agl, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.agl]

# -- faults ----------------------------------------------------------------------------------


def server_spans(agl: AglServer, rollout_ids: set[str]) -> list[dict[str, Any]]:
    """Every span the server holds for the given server rollouts."""
    return [span for rid in sorted(rollout_ids) for span in agl.spans(rid)]


def test_server_restart_mid_stream_delivers_the_rest_exactly_once(
    forwarding_receiver: Callable[..., tuple[ReceiverProcess, str]], agl: AglServer
) -> None:
    receiver, url = forwarding_receiver(batch_spans=500)
    requests = [genai_request(500, rollouts=4, seed=2000 + i) for i in range(43)]
    # New spans for the first rollouts, mapped (and then forgotten by the server) before it stops.
    requests.append(genai_request(500, rollouts=4, seed=2000))
    sent: set[tuple[str, str]] = set().union(*(sent_identities(r) for r in requests))
    assert len(sent) == 22_000
    for request in requests[:20]:
        assert post(receiver, request).status_code == 200
    wait_until(
        lambda: store_status(url, probe=False)["forwarded_spans"] > 0, "first spans forwarded"
    )

    agl.kill()
    killed_at = time.time()
    # Keep the stream going: the receiver keeps acknowledging into its outbox.
    for request in requests[20:30]:
        assert post(receiver, request).status_code == 200
    down = wait_until(
        lambda: (
            (r := store_status(url, probe=False))["last_error_time"]
            and r["last_error_time"] > killed_at
            and r
        ),
        "the forwarder to notice the server is gone",
    )
    delivered_before = down["forwarded_spans"]
    assert 0 < delivered_before < 22_000
    assert down["pending_spans"] > 0
    assert cli_status(url)["server_reachable"] is False

    agl.start()
    for request in requests[30:]:
        assert post(receiver, request).status_code == 200
    report = drained(url, 22_000)

    # The restarted server forgot everything; every span not delivered before reached it once.
    linked = {
        r["rollout_id"]
        for r in agl.rollouts()
        if ((r.get("metadata") or {}).get("lightning_otlp") or {}).get("rollout_id", "")
        in {f"ro-{(2000 + i) * 31 + j:012x}" for i in range(43) for j in range(4)}
    }
    spans = server_spans(agl, linked)
    got = identities(spans)
    assert len(got) == len(set(got)), "duplicates on the server"
    assert set(got) <= sent
    assert len(got) == 22_000 - delivered_before
    final = cli_status(url)
    assert final["forwarded_spans"] == 22_000 == report["forwarded_spans"]
    assert final["pending_spans"] == 0 and final["oldest_pending_age_seconds"] is None
    assert final["rollouts_recreated"] > 0
    assert final["server_reachable"] is True
    for rid in linked:
        by_attempt: dict[str, list[dict[str, Any]]] = {}
        for span in agl.spans(rid):
            by_attempt.setdefault(span["attempt_id"], []).append(span)
        for attempt_spans in by_attempt.values():
            seqs = [s["sequence_id"] for s in attempt_spans]
            assert len(seqs) == len(set(seqs))
    receiver.stop()


def test_receiver_killed_while_forwarding_delivers_every_acknowledged_span_once(
    forwarding_receiver: Callable[..., tuple[ReceiverProcess, str]], agl: AglServer
) -> None:
    receiver, url = forwarding_receiver(batch_spans=500)
    requests = [genai_request(500, rollouts=4, seed=3000 + i) for i in range(40)]
    sent: set[tuple[str, str]] = set().union(*(sent_identities(r) for r in requests))
    for request in requests:
        assert post(receiver, request).status_code == 200  # acknowledged: durable
    wait_until(
        lambda: store_status(url, probe=False)["forwarded_spans"] > 0, "forwarding under way"
    )
    receiver.kill()
    killed = store_status(url, probe=False)
    assert killed["pending_spans"] > 0, "the kill should land while spans are pending"
    assert killed["oldest_pending_age_seconds"] is not None

    forwarding_receiver()  # same outbox, same server
    drained(url, 20_000)
    linked = {
        r["rollout_id"]
        for r in agl.rollouts()
        if ((r.get("metadata") or {}).get("lightning_otlp") or {}).get("rollout_id", "")
        in {f"ro-{(3000 + i) * 31 + j:012x}" for i in range(40) for j in range(4)}
    }
    assert len(linked) == 160  # one server rollout per receiver rollout, even across the kill
    got = identities(server_spans(agl, linked))
    assert len(got) == len(set(got)), "duplicates on the server"
    assert set(got) == sent


def test_full_outbox_answers_retryable_and_resent_spans_are_delivered(
    forwarding_receiver: Callable[..., tuple[ReceiverProcess, str]], agl: AglServer
) -> None:
    receiver, url = forwarding_receiver(max_outbox_spans=1000)
    first, second = genai_request(600, seed=4000), genai_request(600, seed=4001)
    agl.signal(signal.SIGSTOP)  # the server stops answering; connections hang
    try:
        assert post(receiver, first).status_code == 200
        refused = post(receiver, second)
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) >= 1
        with grpc.insecure_channel(receiver.grpc_target) as channel:
            export = channel.unary_unary(
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                request_serializer=PB2ExportTraceServiceRequest.SerializeToString,
                response_deserializer=PB2ExportTraceServiceResponse.FromString,
            )
            with pytest.raises(grpc.RpcError) as failed:
                export(second, timeout=10)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        full = cli_status(url)
        assert full["pending_spans"] == 600 and full["forwarded_spans"] == 0
    finally:
        agl.signal(signal.SIGCONT)
    drained(url, 600)
    assert post(receiver, second).status_code == 200  # the client's retry
    drained(url, 1200)
    local = local_rollouts(url)
    linked = {agl.linked(rid)["rollout_id"] for rid in local}
    got = identities(server_spans(agl, linked))
    assert len(got) == len(set(got)) == 1200
    assert set(got) == sent_identities(first) | sent_identities(second)


def test_bindings_of_delivered_traces_survive_a_restart(
    forwarding_receiver: Callable[..., tuple[ReceiverProcess, str]], agl: AglServer
) -> None:
    """The runner's spans were delivered (and left the outbox) before the receiver restarted;
    the agent's spans of the same trace that come after still join the runner's rollout."""
    runner = agl.create_rollout(input={"task": "restart"})
    ids = {
        "agentlightning.rollout_id": runner["rollout_id"],
        "agentlightning.attempt_id": runner["attempt"]["attempt_id"],
    }
    receiver, url = forwarding_receiver("restart.db")
    marker = make_span("agentlightning.rollout.start", attributes=ids)
    assert post(receiver, make_request([marker])).status_code == 200
    drained(url, 1)
    assert receiver.stop() == 0

    receiver, url = forwarding_receiver("restart.db")
    agent = make_span("agent", trace_id=marker.trace_id, parent_id=marker.span_id)
    assert post(receiver, make_request([agent])).status_code == 200
    drained(url, 2, timeout=30)  # well inside the 600 s window: it was not held
    names = sorted(s["name"] for s in agl.spans(runner["rollout_id"]))
    assert names == ["agent", "agentlightning.rollout.start"]


def test_a_span_the_server_refuses_for_good_is_set_aside(tmp_path: Path, agl: AglServer) -> None:
    """A batch the server answers 4xx is sent again in halves; the one span it refuses is kept
    as rejected, and every other span is delivered."""
    outbox = tmp_path / "poison.db"
    store = ForwardingStore(agl.url, str(outbox), forward=False)
    store.open()
    store.write(route(genai_request(10, rollouts=1, seed=7300), RoutingConfig()))
    store.close()
    with sqlite3.connect(outbox) as conn:  # one stored span's bytes no longer parse
        conn.execute(
            "UPDATE spans SET span = x'ffffffff'"
            " WHERE rowid = (SELECT rowid FROM spans ORDER BY rowid LIMIT 1 OFFSET 6)"
        )
    store = ForwardingStore(agl.url, str(outbox), max_backoff=0.5)
    store.open()
    try:
        wait_until(
            lambda: store.status()["pending_spans"] == 0 and store.status()["rejected_spans"] == 1,
            "nine delivered, one set aside",
        )
        report = store.status()
        assert report["forwarded_spans"] == 9
        assert "refused for good" in report["last_error"]
        local = store.rollouts().__next__()["rollout_id"]
        delivered = agl.spans(agl.linked(local)["rollout_id"])
        assert len(validate_with_agl("Span", delivered)) == 9
    finally:
        store.close()
    with sqlite3.connect(outbox) as conn:
        assert conn.execute(
            "SELECT COUNT(*), MIN(length(span)) FROM forward_rejected"
        ).fetchone() == (1, 4)
