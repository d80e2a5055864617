"""Forwarding throughput: client -> receiver -> LightningStore server, against the server alone.

The same kind of spans (chat-completion spans of about 450 bytes with a prompt and a response, so
every span is a model call the receiver translates; 500 per request, ids in resource attributes
of rollouts a runner created on the server) go:

- straight to the server's ``POST /v1/traces`` (its own rate: the ceiling);
- to a receiver whose store is ``agl+http://…``, timed until the server holds every span;
- one span per ``POST /v1/agl/spans`` (the REST alternative to the batch OTLP path).

Runs alternate so neither side gets a warmer (or fuller) server; the best of each is reported,
with the spread (worst/best) and the CPU time each process spent per span: on a shared machine
rates move with the load, CPU per span much less, and the server's CPU per span for forwarded
requests against direct ones says whether the server itself is what limits forwarding.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from common import agl_store_process, cpu_seconds, load, say

from lightning_otlp.forward.status import store_status
from tests.payloads import GENAI_ATTRIBUTES, GENAI_CONTENT, make_request, make_span

SPANS_PER_REQUEST = 500
REQUESTS = 40  # 20,000 spans per run
ROLLOUTS = 8
ROUNDS = int(os.environ.get("BENCH_FORWARD_ROUNDS", "4"))
REST_SPANS = 1000
# Spans per forwarded request: the default, and the clients' own request size for comparison.
FORWARD_BATCHES = tuple(
    int(b) for b in os.environ.get("BENCH_FORWARD_BATCHES", "1000,500").split(",")
)
PROTOBUF = {"content-type": "application/x-protobuf"}
_LISTEN = re.compile(r"OTLP/HTTP listening on (http://[^\s/]+)")


def payloads(server: httpx.Client, seed: int) -> tuple[list[bytes], list[str]]:
    """Requests for rollouts created on the server first, as a runner would."""
    rollouts = [
        server.post("/v1/agl/rollouts", json={"input": {"bench": seed}}).json()
        for _ in range(ROLLOUTS)
    ]
    ids = [(r["rollout_id"], r["attempt"]["attempt_id"]) for r in rollouts]
    base = time.time_ns()
    out = []
    for n in range(REQUESTS):
        rollout_id, attempt_id = ids[n % ROLLOUTS]
        spans = [
            make_span(
                "chat gpt-4o-mini",
                attributes={
                    **GENAI_ATTRIBUTES,
                    **GENAI_CONTENT,
                    "gen_ai.response.id": f"chatcmpl-{seed}-{n}-{i}",
                },
                start_ns=base + (n * SPANS_PER_REQUEST + i) * 1000,
            )
            for i in range(SPANS_PER_REQUEST)
        ]
        resource = {
            "service.name": "bench-agent",
            "agentlightning.rollout_id": rollout_id,
            "agentlightning.attempt_id": attempt_id,
        }
        out.append(make_request(spans, resource).SerializeToString())
    return out, [r for r, _ in ids]


def held(server: httpx.Client, rollout_ids: list[str]) -> int:
    return sum(
        server.get("/v1/agl/spans", params={"rollout_id": rid, "limit": 1}).json()["total"]
        for rid in rollout_ids
    )


def direct(server: httpx.Client, bodies: list[bytes]) -> float:
    started = time.perf_counter()
    for body in bodies:
        response = server.post("/v1/traces", content=body, headers=PROTOBUF)
        response.raise_for_status()
    return time.perf_counter() - started


def forwarded(receiver_url: str, store_url: str, bodies: list[bytes]) -> tuple[float, float]:
    """(seconds until acknowledged by the receiver, seconds until the server holds them all)."""
    client = httpx.Client(timeout=60)
    started = time.perf_counter()
    for body in bodies:
        response = client.post(receiver_url + "/v1/traces", content=body, headers=PROTOBUF)
        response.raise_for_status()
    acked = time.perf_counter() - started
    # Delivered spans leave the outbox in the transaction that counts them as delivered.
    outbox = sqlite3.connect(
        f"file:{store_status(store_url, probe=False)['outbox']}?mode=ro", uri=True
    )
    while outbox.execute("SELECT 1 FROM spans LIMIT 1").fetchone():
        time.sleep(0.02)
    outbox.close()
    client.close()
    return acked, time.perf_counter() - started


def start_receiver(store_url: str, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    log = open(log_path, "wb")  # kept open for the process's life
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lightning_otlp",
            "serve",
            "--store",
            store_url,
            "--grpc",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--health",
            "127.0.0.1:0",
            "--log-level",
            "warning",
        ],
        stdout=log,
        stderr=log,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = _LISTEN.search(log_path.read_text())
        if found:
            return proc, found.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"receiver did not start: {log_path.read_text()[-2000:]}")


def rest_rate(server: httpx.Client) -> float:
    """One ``POST /v1/agl/spans`` per span, for the same spans as the batch path sends."""
    rollout = server.post("/v1/agl/rollouts", json={"input": None}).json()
    now = time.time()
    records: list[dict[str, Any]] = []
    for i in range(REST_SPANS):
        trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
        records.append(
            {
                "rollout_id": rollout["rollout_id"],
                "attempt_id": rollout["attempt"]["attempt_id"],
                "sequence_id": i + 1,
                "trace_id": trace_id,
                "span_id": span_id,
                "parent_id": None,
                "name": "chat gpt-4o-mini",
                "status": {"status_code": "UNSET", "description": None},
                "attributes": dict(GENAI_ATTRIBUTES),
                "events": [],
                "links": [],
                "start_time": now + i / 1e6,
                "end_time": now + i / 1e6 + 0.001,
                "context": {
                    "trace_id": trace_id,
                    "span_id": span_id,
                    "is_remote": False,
                    "trace_state": {},
                },
                "parent": None,
                "resource": {"attributes": {"service.name": "bench-agent"}, "schema_url": ""},
            }
        )
    started = time.perf_counter()
    for record in records:
        server.post("/v1/agl/spans", json=record).raise_for_status()
    return REST_SPANS / (time.perf_counter() - started)


class Cpu:
    """CPU seconds per span of each process, over one run; the lowest run is kept."""

    def __init__(self) -> None:
        self.best: dict[str, float] = {}

    def start(self, pids: dict[str, int]) -> dict[str, tuple[int, float]]:
        return {name: (pid, cpu_seconds(pid)) for name, pid in pids.items()}

    def stop(self, started: dict[str, tuple[int, float]], spans: int) -> None:
        for name, (pid, before) in started.items():
            used = (cpu_seconds(pid) - before) / spans
            self.best[name] = min(self.best.get(name, used), used)

    def us(self, name: str) -> str:
        return f"{self.best[name] * 1e6:6.1f} us/span"


def spread(rates: list[float]) -> str:
    return f"spread {min(rates) / max(rates):.2f} (worst/best of {len(rates)})"


def main() -> None:
    total = REQUESTS * SPANS_PER_REQUEST
    with (
        tempfile.TemporaryDirectory(prefix="bench-forward-") as tmp,
        agl_store_process(Path(tmp) / "agl.log") as (server_url, server_proc),
    ):
        server = httpx.Client(base_url=server_url, timeout=60)
        port = server_url.rsplit(":", 1)[1]
        receivers = {}
        for batch in FORWARD_BATCHES:
            outbox = Path(tmp) / f"outbox-{batch}.db"
            url = f"agl+http://127.0.0.1:{port}?outbox={outbox}&max_backoff=0.2&batch_spans={batch}"
            receivers[batch] = (url, *start_receiver(url, Path(tmp) / f"receiver-{batch}.log"))
        cpu = Cpu()
        client_pid = os.getpid()
        try:
            direct_rates: list[float] = []
            forward_rates: dict[int, list[float]] = {b: [] for b in FORWARD_BATCHES}
            ack_rates: list[float] = []
            seed = 0
            for _ in range(ROUNDS):
                bodies, ids = payloads(server, seed := seed + 1)
                started = cpu.start({"server, direct": server_proc.pid})
                seconds = direct(server, bodies)
                cpu.stop(started, total)
                assert held(server, ids) == total
                direct_rates.append(total / seconds)
                for batch, (store_url, proc, receiver_url) in receivers.items():
                    bodies, ids = payloads(server, seed := seed + 1)
                    started = cpu.start(
                        {
                            f"receiver, {batch}": proc.pid,
                            f"server, forwarded {batch}": server_proc.pid,
                            f"client, {batch}": client_pid,
                        }
                    )
                    acked, seconds = forwarded(receiver_url, store_url, bodies)
                    cpu.stop(started, total)
                    assert held(server, ids) == total, "the server does not hold every span"
                    forward_rates[batch].append(total / seconds)
                    ack_rates.append(total / acked)
            rest = rest_rate(server)
        finally:
            for _, proc, _ in receivers.values():
                proc.terminate()
                proc.wait(30)
        best_direct = max(direct_rates)
        say(f"{total:,} spans per run, {SPANS_PER_REQUEST} per client request, best of {ROUNDS}")
        say(f"({load()}; CPU per span is each process's lowest over the runs)")
        say(
            f"server alone, POST /v1/traces:                  {best_direct:>9,.0f} spans/s"
            f"   {spread(direct_rates)}   server {cpu.us('server, direct')}"
        )
        for batch, rates in forward_rates.items():
            best = max(rates)
            say(
                f"client -> receiver -> server, {batch:>4} per forward: {best:>9,.0f} spans/s"
                f"   ratio {best / best_direct:.2f}   {spread(rates)}"
            )
            say(
                f"    receiver {cpu.us(f'receiver, {batch}')}"
                f"   server {cpu.us(f'server, forwarded {batch}')}"
                f"   client {cpu.us(f'client, {batch}')}"
            )
            # What the figures above would be with no spare core (every process's CPU time in
            # turn, as on a busy machine) and with a core each for receiver and server (a quiet
            # 2-core machine: the slower of the two sets the pace); the client is left out.
            alone = cpu.best["server, direct"]
            receiver = cpu.best[f"receiver, {batch}"]
            relayed = cpu.best[f"server, forwarded {batch}"]
            say(
                f"    by CPU per span: ratio {alone / (receiver + relayed):.2f} with no spare core,"
                f" {min(1.0, alone / max(receiver, relayed)):.2f} with a core each;"
                f" the server alone would forward at {alone / relayed:.2f} of its direct rate"
            )
        say(f"client -> receiver only (until acknowledged):   {max(ack_rates):>9,.0f} spans/s")
        say(f"server alone, POST /v1/agl/spans one per span:  {rest:>9,.0f} spans/s")
