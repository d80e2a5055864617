"""Many receivers, one PostgreSQL store: real ``lightning-otlp serve`` processes on one real
PostgreSQL server (tests/postgres.py), driven by agentlightning 0.3.0's own client, the
OpenTelemetry Python SDK's exporters and the OCB-built Collector. Figures are printed (run with
``-s`` to see them).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceResponse as PB2ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from .collectors import prometheus
from .fleet import Fleet, RoundRobinSender, gateway_for, grpc_tracer, rollout_spans
from .payloads import make_request, make_span
from .postgres import PostgresServer
from .support import ROOT, AglStore, run_agl_script, wait_until
from .test_api_conformance import compare

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

CONFORMANCE = ROOT / "tests" / "clients" / "agl_conformance.py"
WORKERS = ROOT / "tests" / "clients" / "fleet_workers.py"
TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def new_ids() -> tuple[str, str]:
    """A rollout id and an attempt id in agentlightning's formats, made by the client."""
    return f"ro-{os.urandom(6).hex()}", f"at-{os.urandom(4).hex()}"


def ids_attributes(rollout_id: str, attempt_id: str) -> dict[str, str]:
    return {"agentlightning.rollout_id": rollout_id, "agentlightning.attempt_id": attempt_id}


@pytest.fixture
def fleet(pg_url: str, tmp_path: Path) -> Iterator[Fleet]:
    """Three receivers on one fresh PostgreSQL database; each must stop cleanly."""
    with Fleet(pg_url, tmp_path, count=3) as running:
        yield running
    assert [r.proc.returncode for r in running if r.proc] == [0, 0, 0], running.tracebacks()
    assert running.tracebacks() == []


# -- agentlightning's client through the fleet ---------------------------------------------


@pytest.fixture(scope="module")
def conformance(
    pg_server: PostgresServer, tmp_path_factory: Any
) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """The conformance scenarios through two receivers of one store, requests alternating
    between them, and against ``agl store``: both answers, in one agentlightning process."""
    tmp = tmp_path_factory.mktemp("fleet-conformance")
    fleet = Fleet(pg_server.create_database(), tmp, count=2).start()
    upstream = AglStore(tmp / "agl.log").start()
    ours = ",".join(fleet.http_urls)
    try:
        yield ours, upstream.url, run_agl_script(CONFORMANCE, ours, upstream.url)
    finally:
        upstream.stop()
        assert fleet.stop() == [0, 0]
        assert fleet.tracebacks() == []


@pytest.mark.agl
@pytest.mark.api
def test_every_method_through_two_receivers_answers_as_agl_store_does(
    conformance: tuple[str, str, dict[str, Any]],
) -> None:
    compare(conformance, "api")
    ours, _, answers = conformance
    per_server = answers["requests_per_server"]
    assert sorted(per_server) == sorted(ours.split(","))
    assert min(per_server.values()) >= 50, per_server  # each took its turn, all along


@pytest.mark.agl
@pytest.mark.api
def test_watchdog_through_two_receivers_acts_as_agl_stores_does(
    conformance: tuple[str, str, dict[str, Any]],
) -> None:
    compare(conformance, "watchdog")


@pytest.mark.agl
def test_each_rollout_is_handed_to_exactly_one_of_twelve_workers(fleet: Fleet) -> None:
    """300 rollouts enqueued through one receiver, 12 workers dequeuing through three."""
    started = time.monotonic()
    out = run_agl_script(WORKERS, fleet.http_urls[0], "300", "12", *fleet.http_urls)
    seconds = time.monotonic() - started
    enqueued, handed = out["enqueued"], out["handed"]
    assert len(set(enqueued)) == 300
    times_handed = Counter(rollout_id for _, rollout_id, _ in handed)
    assert sorted(times_handed) == sorted(enqueued)
    assert set(times_handed.values()) == {1}, [r for r, n in times_handed.items() if n > 1]
    assert Counter(out["statuses"].values()) == Counter({"succeeded": 300})
    per_receiver = Counter(worker % 3 for worker, _, _ in handed)
    per_worker = Counter(worker for worker, _, _ in handed)
    print(
        f"\n[fleet dequeue] 300 rollouts, 12 workers on 3 receivers: handed once each, "
        f"per receiver {sorted(per_receiver.values())}, per worker "
        f"{min(per_worker.values())}..{max(per_worker.values())}, {seconds:.1f} s",
        flush=True,
    )
    assert len(per_receiver) == 3


# -- OTLP spread over the fleet ------------------------------------------------------------


class SpanBySpan(SpanProcessor):
    """Each ended span to the next exporter in turn: one trace's spans over every receiver."""

    def __init__(self, processors: list[SpanProcessor]) -> None:
        self.processors = processors
        self.turn = itertools.cycle(processors)

    def on_end(self, span: ReadableSpan) -> None:
        next(self.turn).on_end(span)

    def shutdown(self) -> None:
        for processor in self.processors:
            processor.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return all(p.force_flush(timeout_millis) for p in self.processors)


def test_traces_split_span_by_span_read_back_whole_through_every_receiver(fleet: Fleet) -> None:
    """Ids only on each root span, which ends (and so arrives) after its children; each span
    through another receiver, over OTLP/HTTP and OTLP/gRPC."""
    exporters = [
        HttpSpanExporter(endpoint=fleet[0].traces_url),
        GrpcSpanExporter(endpoint=fleet[1].grpc_target, insecure=True),
        HttpSpanExporter(endpoint=fleet[2].traces_url),
    ]
    provider = TracerProvider(resource=Resource.create({"service.name": "fleet-agent"}))
    provider.add_span_processor(SpanBySpan([SimpleSpanProcessor(e) for e in exporters]))
    tracer = provider.get_tracer("fleet")
    expected: dict[str, list[str]] = {}
    for n in range(20):
        rollout_id, attempt_id = new_ids()
        with tracer.start_as_current_span(
            f"root {n}", attributes=ids_attributes(rollout_id, attempt_id)
        ):
            for k in range(2):
                with tracer.start_as_current_span(f"step {n}.{k}"):
                    with tracer.start_as_current_span(f"chat {n}.{k}"):
                        pass
        expected[rollout_id] = sorted(
            [f"root {n}"] + [f"{kind} {n}.{k}" for k in range(2) for kind in ("step", "chat")]
        )
    provider.shutdown()  # every export answered: all acknowledged

    def whole(url: str) -> bool:
        return all(
            sorted(s["name"] for s in rollout_spans(url, rollout_id)) == names
            for rollout_id, names in expected.items()
        )

    for url in fleet.http_urls:
        wait_until(lambda url=url: whole(url), f"every rollout whole through {url}", 30)
        for rollout_id in expected:
            spans = rollout_spans(url, rollout_id)
            assert len({s["trace_id"] for s in spans}) == 1
            sequence_ids = [s["sequence_id"] for s in spans]
            assert len(set(sequence_ids)) == len(sequence_ids) == 5


def otlp_request(index: int, rollouts: list[tuple[str, str]], spans: int = 20) -> Any:
    """Request ``index``: ``spans`` spans of one trace, in one of ``rollouts`` (resource ids)."""
    trace_id = (index + 1).to_bytes(16, "big")  # never the all-zero (invalid) trace id
    body = [make_span(f"span {index}.{k}", trace_id=trace_id) for k in range(spans)]
    return make_request(body, resource=ids_attributes(*rollouts[index % len(rollouts)]))


def stored_keys(fleet: Fleet, rollouts: list[tuple[str, str]], via: int = 0) -> Counter[Any]:
    return Counter(
        (s["trace_id"], s["span_id"])
        for rollout_id, _ in rollouts
        for s in rollout_spans(fleet.http_urls[via], rollout_id)
    )


def test_kill_9_of_a_receiver_loses_no_acknowledged_span(fleet: Fleet) -> None:
    rollouts = [new_ids() for _ in range(5)]
    sender = RoundRobinSender(fleet)
    requests = [otlp_request(n, rollouts) for n in range(300)]
    sent = {
        (s.trace_id.hex(), s.span_id.hex())
        for r in requests
        for s in r.resource_spans[0].scope_spans[0].spans
    }

    def load() -> None:
        for request in requests:
            sender.send(request)

    thread = threading.Thread(target=load)
    thread.start()
    try:
        wait_until(lambda: len(sender.acknowledged) >= 100 * 20, "100 requests acknowledged")
        fleet.kill(1)
    finally:
        thread.join(300)
        sender.close()
    assert not thread.is_alive()
    acknowledged = Counter(sender.acknowledged)
    stored = stored_keys(fleet, rollouts, via=2)
    errors = Counter(a.what for a in sender.answers if a.what != "http")
    print(
        f"\n[fleet kill -9] 300 requests of 20 spans round robin over 3 receivers, receiver 1 "
        f"killed after 100: acknowledged {len(acknowledged)}, stored {sum(stored.values())} "
        f"({len(stored)} distinct), transport errors {dict(errors)}",
        flush=True,
    )
    assert set(acknowledged) == sent  # every request was acknowledged in the end
    assert stored == Counter({key: 1 for key in sent})  # each span stored exactly once
    assert errors, "the kill was never seen by the client"
    fleet.restart(1)  # back on its ports, on the same store, which it reads whole
    assert stored_keys(fleet, rollouts, via=1) == stored


def grpc_export(target: str, request: Any) -> grpc.StatusCode:
    """One raw OTLP/gRPC export: the status code it ends with."""
    with grpc.insecure_channel(target) as channel:
        export = channel.unary_unary(
            TRACE_EXPORT,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=PB2ExportTraceServiceResponse.FromString,
        )
        try:
            export(request, timeout=30)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_postgresql_down_10_s_under_load_gives_retryable_answers_and_loses_nothing(
    own_pg: PostgresServer, tmp_path: Path
) -> None:
    """An immediate stop (a crash) of the database while a client sends; started again 10 s
    later, the same receiver processes serve again by themselves."""
    rollouts = [new_ids() for _ in range(4)]
    with Fleet(own_pg.create_database(), tmp_path, count=3) as fleet:
        pids = [r.proc.pid for r in fleet if r.proc]
        sender = RoundRobinSender(fleet, pause=0.2)
        stop = threading.Event()
        sent: set[tuple[str, str]] = set()

        def load() -> None:
            for n in itertools.count():
                if stop.is_set():
                    return
                request = otlp_request(n, rollouts, spans=10)
                sent.update(
                    (s.trace_id.hex(), s.span_id.hex())
                    for s in request.resource_spans[0].scope_spans[0].spans
                )
                sender.send(request)

        thread = threading.Thread(target=load)
        thread.start()
        try:
            wait_until(lambda: len(sender.acknowledged) >= 500, "500 spans acknowledged")
            own_pg.stop("immediate")
            down = time.monotonic()
            before = len(sender.answers)
            # at least 10 s down; longer if these checks take longer on a busy machine
            wait_until(lambda: not any(r.ready() for r in fleet), "every receiver not ready", 30)
            wait_until(lambda: any(a.status == 503 for a in sender.answers[before:]), "a 503", 30)
            grpc_code = grpc_export(fleet[0].grpc_target, otlp_request(10**6, rollouts, 1))
            acknowledged_while_down = len(sender.acknowledged)
            time.sleep(max(0.0, 10 - (time.monotonic() - down)))
            acknowledged_after_10_s = len(sender.acknowledged)
            during = sender.answers[before:]
            outage = time.monotonic() - down
            own_pg.start()
            up = time.monotonic()
            wait_until(lambda: all(r.ready() for r in fleet), "every receiver ready again", 60)
            recovered = time.monotonic() - up
            wait_until(
                lambda: len(sender.acknowledged) >= acknowledged_after_10_s + 500,
                "500 more spans acknowledged",
                60,
            )
        finally:
            stop.set()
            thread.join(180)
            sender.close()
        assert not thread.is_alive()
        assert [r.proc.pid for r in fleet if r.proc] == pids  # no receiver was restarted
        stored = stored_keys(fleet, rollouts)
    assert [r.proc.returncode for r in fleet if r.proc] == [0, 0, 0]
    assert fleet.tracebacks() == []
    refusals = Counter((a.status, a.retry_after is not None) for a in during if a.status != 200)
    slowest = max((a.seconds for a in during if a.status != 200), default=0.0)
    print(
        f"\n[fleet PostgreSQL down {outage:.1f} s] answers while down {dict(refusals)} (slowest "
        f"{slowest:.1f} s), "
        f"gRPC {grpc_code.name}, ready again {recovered:.1f} s after the start, acknowledged "
        f"{len(sender.acknowledged)} spans, stored {sum(stored.values())}",
        flush=True,
    )
    assert grpc_code == grpc.StatusCode.UNAVAILABLE
    # while down: only retryable refusals, each with Retry-After; no 500, no dropped connection
    assert set(refusals) <= {(503, True), (429, True)}, refusals
    assert acknowledged_after_10_s == acknowledged_while_down  # nothing acknowledged while down
    acknowledged = Counter(sender.acknowledged)
    assert set(acknowledged) <= set(stored)  # no acknowledged span lost
    assert set(stored.values()) == {1} and set(stored) <= sent


@pytest.mark.collector
def test_gateway_by_trace_id_in_front_of_three_receivers_keeps_rollouts_whole(
    fleet: Fleet, tmp_path: Path
) -> None:
    """collector-config/gateway.yaml: each rollout's two traces go to whichever receivers their
    trace ids pick, and the rollout is whole in the shared store."""
    gateway = gateway_for(fleet, tmp_path)
    try:
        gateway.start()
        provider, tracer = grpc_tracer(gateway.grpc_endpoint)
        expected: dict[str, list[str]] = {}
        for n in range(30):
            ids = new_ids()
            for part in ("plan", "act"):  # two traces, the ids on each root only
                with tracer.start_as_current_span(f"{part} {n}", attributes=ids_attributes(*ids)):
                    with tracer.start_as_current_span(f"chat {part} {n}"):
                        pass
            names = [f"{a}{p} {n}" for p in ("plan", "act") for a in ("", "chat ")]
            expected[ids[0]] = sorted(names)
        assert provider.force_flush(30_000)
        provider.shutdown()

        def whole() -> bool:
            return all(
                sorted(s["name"] for s in rollout_spans(fleet.http_urls[n % 3], rollout_id))
                == names
                for n, (rollout_id, names) in enumerate(expected.items())
            )

        wait_until(whole, "every rollout whole in the shared store", 120, interval=0.5)
    finally:
        gateway.close()
    accepted = [
        prometheus(httpx.get(r.health_url + "/metrics").text, "otelcol_receiver_accepted_spans")
        for r in fleet
    ]
    print(
        f"\n[fleet gateway.yaml] 30 rollouts of two traces each through the gateway, all whole: "
        f"spans accepted per receiver {accepted}",
        flush=True,
    )
    assert sum(accepted) == 120 and all(accepted), accepted


def test_a_wait_on_one_receiver_sees_a_rollout_finished_through_another(
    pg_url: str, tmp_path: Path
) -> None:
    """Another receiver's commit wakes nothing here: a wait looks again every half second,
    not only at the watchdog's interval (a minute here) or its own timeout (40 s)."""
    with Fleet(pg_url, tmp_path, "--watchdog-interval", "60", count=2) as fleet:
        first, second = fleet[0].http_url + "/v1/agl", fleet[1].http_url + "/v1/agl"
        enqueue = {"rollouts": [{"input": 1}]}
        [queued] = httpx.post(f"{first}/queues/rollouts/enqueue", json=enqueue).json()
        rollout_id = queued["rollout_id"]
        [taken] = httpx.post(f"{first}/queues/rollouts/dequeue", json={"limit": 1}).json()
        answers: list[Any] = []

        def wait() -> None:
            body = {"rollout_ids": [rollout_id], "timeout": 40}
            answers.append(httpx.post(f"{second}/waits/rollouts", json=body, timeout=90).json())

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(1.0)  # the wait has looked once and sleeps
        finished = time.monotonic()
        attempt_id = taken["attempt"]["attempt_id"]
        response = httpx.post(
            f"{first}/rollouts/{rollout_id}/attempts/{attempt_id}", json={"status": "succeeded"}
        )
        assert response.status_code == 200, response.text
        waiter.join(90)
    assert [[r["rollout_id"] for r in answers[0]]] == [[rollout_id]]
    assert time.monotonic() - finished < 30  # woken by looking again, not by its 40 s timeout
