"""End to end through a real Collector built from collector-config/builder-config.yaml.

The sidecar: agents → Collector (sidecar.yaml) → ``lightning-otlp serve``, with the receiver
stopped for 30 s and the Collector restarted (and killed) mid-stream. The gateway is in
test_e2e_gateway.py. Figures are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from lightning_otlp import ids

from .collectors import (
    OTELCOL,
    OTELCOL_VERSION,
    CollectorProcess,
    built,
    free_port,
    prometheus,
)
from .support import ReceiverProcess, wait_until
from .test_collector_config import collector_configs, component_type

pytestmark = [pytest.mark.e2e, pytest.mark.collector]

OUTAGE_SECONDS = 30.0
QUEUE_METRIC = "otelcol_exporter_queue_size"
SENT_METRIC = "otelcol_exporter_sent_spans"


class _Collect(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Any) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


class Agent:
    """An agent in a thread: the Python SDK's OTLP/gRPC exporter into the Collector.

    Spans are made in batches of ``batch`` (one rollout per batch, ids as span attributes) and
    exported with the stock exporter; a batch counts as acknowledged only when ``export``
    returns SUCCESS, and a failed batch is exported again until it is, as an SDK's queue would.
    """

    def __init__(self, endpoint: str, batch: int = 20, pause: float = 0.2) -> None:
        self.exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=5)
        self.batch = batch
        self.pause = pause
        self.collect = _Collect()
        provider = TracerProvider(resource=Resource.create({"service.name": "sidecar-agent"}))
        provider.add_span_processor(SimpleSpanProcessor(self.collect))
        self.tracer = provider.get_tracer("sidecar-agent")
        self.acknowledged: set[tuple[str, str]] = set()
        self.exports = 0
        self.failed_exports = 0
        self.rollouts: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Agent:
        self._thread.start()
        return self

    def finish(self) -> None:
        self._stop.set()
        self._thread.join(120)
        assert not self._thread.is_alive(), "the agent could not deliver its last batch"
        self.exporter.shutdown()

    def _batch(self) -> list[ReadableSpan]:
        rollout_id, attempt_id = ids.new_rollout_id(), ids.new_attempt_id()
        self.rollouts.add(rollout_id)
        attributes = {
            "agentlightning.rollout_id": rollout_id,
            "agentlightning.attempt_id": attempt_id,
        }
        self.collect.spans = []
        with self.tracer.start_as_current_span("agent run", attributes=attributes):
            for i in range(self.batch - 1):
                with self.tracer.start_as_current_span("chat gpt-4o-mini", attributes=attributes):
                    pass
                del i
        return self.collect.spans

    def _run(self) -> None:
        while not self._stop.is_set():
            spans = self._batch()
            while True:  # until acknowledged, even after finish() is asked
                self.exports += 1
                if self.exporter.export(spans) == SpanExportResult.SUCCESS:
                    break
                self.failed_exports += 1
                time.sleep(0.5)
            for span in spans:
                ctx = span.get_span_context()
                assert ctx is not None
                self.acknowledged.add((format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")))
            self._stop.wait(self.pause)


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[tuple[CollectorProcess, ReceiverProcess]]:
    """A receiver on a fixed free port, and the sidecar Collector in front of it."""
    receiver_port = free_port()
    receiver = ReceiverProcess(tmp_path / "receiver.db", "--grpc", f"127.0.0.1:{receiver_port}")
    receiver.start()
    collector = CollectorProcess(
        "sidecar.yaml",
        tmp_path,
        # the queue's directory moves into the test's; nothing else of sidecar.yaml changes
        {"extensions": {"file_storage/queue": {"directory": str(tmp_path / "queue")}}},
        {"LIGHTNING_OTLP_ENDPOINT": f"127.0.0.1:{receiver_port}"},
    ).start()
    yield collector, receiver
    collector.close()
    receiver.stop()
    assert "Traceback" not in receiver.log()


def stored(receiver: ReceiverProcess) -> list[tuple[str, str]]:
    return [(s["trace_id"], s["span_id"]) for s in receiver.spans()]


def accepted(receiver: ReceiverProcess) -> float:
    import httpx

    text = httpx.get(receiver.health_url + "/metrics", timeout=5).text
    return prometheus(text, "otelcol_receiver_accepted_spans")


def report(title: str, **figures: Any) -> None:
    print(f"\n[{title}] " + ", ".join(f"{k}={v}" for k, v in figures.items()), flush=True)


def test_sidecar_holds_spans_on_disk_while_the_receiver_is_down(
    sidecar: tuple[CollectorProcess, ReceiverProcess],
) -> None:
    import httpx

    collector, receiver = sidecar
    agent = Agent(collector.grpc_endpoint).start()
    wait_until(lambda: len(receiver.spans()) >= 100, "the first spans through the Collector")

    accepted_before = accepted(receiver)
    assert receiver.stop() == 0
    down_at = time.monotonic()
    sent_before = prometheus(collector.metrics(), SENT_METRIC)
    acknowledged_before = len(agent.acknowledged)
    # While the receiver is down the agent keeps exporting and the Collector keeps answering:
    # its health stays 200, its disk queue grows and its exporter sends nothing.
    queue_seen = 0.0
    while time.monotonic() - down_at < OUTAGE_SECONDS:
        assert collector.health() == 200
        queue_seen = max(queue_seen, prometheus(collector.metrics(), QUEUE_METRIC))
        time.sleep(1)
    sent_during_outage = len(agent.acknowledged) - acknowledged_before
    assert queue_seen > 0, collector.metrics()
    assert prometheus(collector.metrics(), SENT_METRIC) == sent_before

    receiver.start()
    restarted_at = time.monotonic()
    assert httpx.get(receiver.health_url + "/health/ready", timeout=5).status_code == 200
    time.sleep(3)  # the agent goes on sending after the restart too
    agent.finish()
    acknowledged = agent.acknowledged
    wait_until(
        lambda: set(stored(receiver)) >= acknowledged,
        "every acknowledged span in the receiver",
        timeout=180,
        interval=0.5,
    )
    drain_seconds = time.monotonic() - restarted_at
    wait_until(lambda: prometheus(collector.metrics(), QUEUE_METRIC) == 0, "an empty queue")

    rows = stored(receiver)
    duplicates_stored = len(rows) - len(set(rows))
    received = accepted_before + accepted(receiver)
    report(
        f"sidecar, receiver down {OUTAGE_SECONDS:.0f} s, otelcol {OTELCOL_VERSION}",
        spans_sent=len(acknowledged),
        sent_while_down=sent_during_outage,
        delivered=len(set(rows)),
        duplicates_stored=duplicates_stored,
        resent_and_deduplicated=int(received) - len(set(rows)),
        max_queue_batches=int(queue_seen),
        collector_sent_spans=int(prometheus(collector.metrics(), SENT_METRIC)),
        drain_seconds=round(drain_seconds, 1),
        agent_failed_exports=agent.failed_exports,
    )
    assert set(rows) == acknowledged
    assert duplicates_stored == 0
    assert {s["rollout_id"] for s in receiver.spans()} == agent.rollouts


@pytest.mark.parametrize("how", ["restart", "kill"])
def test_sidecar_restarted_mid_stream_loses_nothing_acknowledged(
    sidecar: tuple[CollectorProcess, ReceiverProcess], how: str
) -> None:
    collector, receiver = sidecar
    agent = Agent(collector.grpc_endpoint, pause=0.05).start()
    wait_until(lambda: len(agent.acknowledged) >= 400, "spans acknowledged to the agent")
    if how == "kill":
        collector.kill()  # SIGKILL: whatever the Collector held only in memory is gone
    else:
        assert collector.stop() == 0
    acknowledged_at_stop = len(agent.acknowledged)
    collector.start()
    time.sleep(3)
    agent.finish()
    acknowledged = agent.acknowledged
    try:
        wait_until(
            lambda: set(stored(receiver)) >= acknowledged,
            "every acknowledged span in the receiver",
            timeout=120,
            interval=0.5,
        )
    finally:
        rows = stored(receiver)
        report(
            f"sidecar, Collector {how} mid-stream, otelcol {OTELCOL_VERSION}",
            spans_acknowledged=len(acknowledged),
            acknowledged_before_stop=acknowledged_at_stop,
            delivered=len(set(rows)),
            lost=len(acknowledged - set(rows)),
            duplicates_stored=len(rows) - len(set(rows)),
            agent_failed_exports=agent.failed_exports,
        )
    assert len(rows) == len(set(rows))


def used_components() -> dict[str, set[str]]:
    """Component types each kind of the project's Collector configs names."""
    used: dict[str, set[str]] = {}
    for config in collector_configs().values():
        for kind in ("receivers", "processors", "exporters", "connectors", "extensions"):
            used.setdefault(kind, set()).update(component_type(c) for c in config.get(kind) or {})
    return used


def test_the_built_collector_holds_exactly_the_components_the_configs_use() -> None:
    done = subprocess.run(
        [str(built(OTELCOL, "collector")), "components"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    listed = yaml.safe_load(done.stdout)
    assert listed["buildinfo"]["version"] == OTELCOL_VERSION
    have = {kind: {c["name"] for c in listed[kind] or []} for kind in used_components()}
    assert have == used_components()


@pytest.mark.parametrize("name", sorted(collector_configs()))
def test_every_config_validates(name: str, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(collector_configs()[name]))
    done = subprocess.run(
        [str(built(OTELCOL, "collector")), "validate", "--config", str(path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
