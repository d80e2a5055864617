"""The gateway configs, run. The rollout-keyed one: agents → gateway Collector
(gateway-rollout.yaml) → three receivers, each forwarding into one real LightningStore server
(``agl store`` 0.3.0).

Python and TypeScript runners start rollouts; each rollout makes two traces (a runner's trace
and a second one it starts later), and in each a Go agent service is called over HTTP with the
rollout ids in W3C Baggage. Every rollout must come out as exactly one server rollout holding all
of its spans: the gateway routes by rollout id, so no rollout is split across receivers. Figures
are printed (run with ``-s`` to see them). The one for a shared store (gateway.yaml) balances by
trace id alone; the last test shows where it sends spans.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lightning_otlp.forward.status import store_status

from .collectors import (
    GO_AGENT_BIN,
    OTELCOL_VERSION,
    CollectorProcess,
    built,
    free_port,
    start_service,
    stop_service,
)
from .fleet import Fleet, gateway_for, grpc_tracer
from .forwarding import AglServer
from .support import NODE_DIR, ROOT, ReceiverProcess, node_script, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.collector, pytest.mark.agl, pytest.mark.go]

ROLLOUTS_PER_RUNNER = 100
GO_SPANS_PER_CALL = ["POST /solve", "chat gpt-4o-mini"]


def outbox_rollouts(outbox: Path) -> set[str]:
    with sqlite3.connect(outbox) as conn:
        return {r[0] for r in conn.execute("SELECT rollout_id FROM rollouts")}


@pytest.fixture
def agl(tmp_path: Path) -> Iterator[AglServer]:
    server = AglServer(tmp_path / "agl-store.log")
    server.start()
    yield server
    server.kill()
    server.http.close()


def sent_name(span: dict[str, Any]) -> str:
    """The name the span was sent with (the forwarder renames model calls, keeping this)."""
    name: str = span["attributes"].get("lightning_otlp.original_name", span["name"])
    return name


def forwarded(urls: list[str]) -> int | None:
    """Spans the receivers forwarded to the server, once none is left in their outboxes."""
    reports = [store_status(url, probe=False) for url in urls]
    if any(r["pending_spans"] for r in reports):
        return None
    return sum(int(r["forwarded_spans"]) for r in reports)


# gateway-rollout.yaml as it is, and, for contrast, with the rollout route sent by trace id too.
TRACE_ID_ONLY = {
    "service": {"pipelines": {"traces/by_rollout": {"exporters": ["loadbalancing/trace"]}}}
}


@pytest.mark.parametrize("routing", ["rollout id", "trace id only"])
def test_gateway_keeps_every_rollout_whole_in_one_server_rollout(
    tmp_path: Path, agl: AglServer, routing: str
) -> None:
    per_runner = ROLLOUTS_PER_RUNNER if routing == "rollout id" else 20
    service = built(GO_AGENT_BIN / "service", "go-agent")
    ports = [free_port() for _ in range(3)]
    urls = [agl.forward_url(tmp_path / f"outbox-{i}.db") for i in range(3)]
    receivers = [
        ReceiverProcess(
            tmp_path / f"receiver-{i}.db", "--grpc", f"127.0.0.1:{port}", "--store", url
        )
        for i, (port, url) in enumerate(zip(ports, urls, strict=True))
    ]
    gateway = CollectorProcess(
        "gateway-rollout.yaml",
        tmp_path,
        {} if routing == "rollout id" else TRACE_ID_ONLY,
        {f"LIGHTNING_OTLP_{i}": f"127.0.0.1:{port}" for i, port in enumerate(ports)},
    )
    agents: list[subprocess.Popen[bytes]] = []
    try:
        for receiver in receivers:
            receiver.start()
        gateway.start()
        # Two Go agent services: one exports OTLP/gRPC, the other OTLP/HTTP.
        for protocol, endpoint in (
            ("grpc", gateway.grpc_endpoint),
            ("http/protobuf", gateway.http_endpoint),
        ):
            proc, url = start_service(
                [str(service)],
                {
                    "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                    "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
                    "OTEL_BSP_SCHEDULE_DELAY": "200",
                    "PORT": "0",
                },
                tmp_path / f"go-agent-{protocol.replace('/', '-')}.log",
            )
            agents.append(proc)
            if protocol == "grpc":
                python_agent_url = url
            else:
                node_agent_url = url

        started = time.monotonic()
        python_runner = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "tests" / "clients" / "rollout_runner.py"),
                python_agent_url,
                str(per_runner),
            ],
            env={**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": gateway.grpc_endpoint},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        node_runner = subprocess.Popen(
            [
                "node",
                str(node_script("rollout_runner.js")),
                gateway.http_endpoint + "/v1/traces",
                node_agent_url,
                str(per_runner),
            ],
            env={**os.environ, "NODE_PATH": str(NODE_DIR / "node_modules")},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        expected: dict[str, list[str]] = {}
        for name, runner in (("python", python_runner), ("node", node_runner)):
            out, err = runner.communicate(timeout=600)
            assert runner.returncode == 0, f"{name} runner failed:\n{err}"
            lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
            assert len(lines) == per_runner, out
            for line in lines:
                expected[line["rollout_id"]] = sorted(line["spans"] + GO_SPANS_PER_CALL * 2)
        for proc in agents:
            assert stop_service(proc) == 0  # flushes the agents' last spans
        total = sum(len(names) for names in expected.values())

        wait_until(
            lambda: (forwarded(urls) or 0) >= total,
            f"{total} spans in the server",
            timeout=300,
            interval=1.0,
        )
        drain_seconds = time.monotonic() - started

        by_local: dict[str, list[dict[str, Any]]] = {}
        for item in agl.rollouts():
            local = ((item.get("metadata") or {}).get("lightning_otlp") or {}).get("rollout_id")
            by_local.setdefault(local, []).append(item)
        server_rollouts_per_rollout = Counter(len(by_local.get(r, [])) for r in expected)
        receivers_per_rollout = Counter(
            sum(rollout_id in outbox_rollouts(tmp_path / f"outbox-{i}.db") for i in range(3))
            for rollout_id in expected
        )
        delivered = 0
        duplicates = 0
        not_whole: list[str] = []  # no server rollout holds all of the rollout's spans
        for rollout_id, names in expected.items():
            for server_rollout in by_local.get(rollout_id, []):
                spans = agl.spans(server_rollout["rollout_id"])
                delivered += len(spans)
                keys = [(s["trace_id"], s["span_id"]) for s in spans]
                duplicates += len(keys) - len(set(keys))
                whole = sorted(sent_name(s) for s in spans) == names
                if whole:
                    assert len({s["trace_id"] for s in spans}) == 2  # both of its traces
                    break
            else:
                not_whole.append(rollout_id)
        per_receiver = [len(outbox_rollouts(tmp_path / f"outbox-{i}.db")) for i in range(3)]
        print(
            f"\n[gateway routing by {routing}, otelcol {OTELCOL_VERSION}, 3 receivers → "
            f"agl store 0.3.0] rollouts={len(expected)} (python {per_runner}, typescript "
            f"{per_runner}, 2 traces each, Go agents gRPC and HTTP), "
            f"spans_sent={total}, delivered={delivered}, duplicates={duplicates}, "
            f"rollouts_not_whole={len(not_whole)}, "
            f"server_rollouts_per_rollout={dict(server_rollouts_per_rollout)}, "
            f"receivers_per_rollout={dict(receivers_per_rollout)}, "
            f"rollouts_per_receiver={per_receiver}, seconds_to_all_delivered={drain_seconds:.1f}",
            flush=True,
        )
        assert delivered == total and duplicates == 0
        assert all(n > 0 for n in per_receiver), per_receiver
        if routing == "rollout id":
            assert server_rollouts_per_rollout == Counter({1: len(expected)})
            assert receivers_per_rollout == Counter({1: len(expected)})
            assert not_whole == []
        else:  # the failure the rollout route prevents: rollouts split over receivers
            assert not_whole and max(server_rollouts_per_rollout) > 1
        assert "Traceback" not in "".join(r.log() for r in receivers)
    finally:
        for proc in agents:
            stop_service(proc)
        gateway.close()
        for receiver in receivers:
            receiver.stop()


def test_shared_store_gateway_spreads_traces_over_every_receiver(tmp_path: Path) -> None:
    """gateway.yaml (by trace id alone) in front of three receivers: every span delivered once,
    each trace on one receiver, every receiver used. A SQLite file each here, to see where each
    span went; test_e2e_fleet.py runs it on one shared PostgreSQL."""
    traces, per_trace = 60, 3
    with Fleet([f"sqlite:///{tmp_path / f'receiver-{i}.db'}" for i in range(3)], tmp_path) as fleet:
        gateway = gateway_for(fleet, tmp_path)
        try:
            gateway.start()
            provider, tracer = grpc_tracer(gateway.grpc_endpoint)
            for n in range(traces):
                with tracer.start_as_current_span(f"root {n}"):
                    for k in range(per_trace - 1):
                        with tracer.start_as_current_span(f"child {n}.{k}"):
                            pass
            assert provider.force_flush(30_000)
            provider.shutdown()
            total = traces * per_trace
            wait_until(lambda: sum(len(r.spans()) for r in fleet) >= total, f"{total} spans", 120)
            stored = [r.spans() for r in fleet]
        finally:
            gateway.close()
    keys = [(s["trace_id"], s["span_id"]) for spans in stored for s in spans]
    assert len(keys) == len(set(keys)) == total
    receivers_per_trace = Counter(
        len({i for i, spans in enumerate(stored) for s in spans if s["trace_id"] == trace})
        for trace in {s["trace_id"] for spans in stored for s in spans}
    )
    assert receivers_per_trace == Counter({1: traces})
    assert all(stored), [len(spans) for spans in stored]
    assert fleet.tracebacks() == []
