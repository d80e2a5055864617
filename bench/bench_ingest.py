"""Ingest throughput: OTLP/HTTP protobuf and OTLP/gRPC into the durable SQLite store, against
upstream's LightningStore server (``agl store``, in-memory, its ``/v1/traces``) in the same run.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import grpc
import httpx

from bench.common import Run, agl_store, say, timed
from tests.payloads import genai_request
from tests.support import ReceiverProcess

SPANS = int(os.environ.get("BENCH_SPANS", "204800"))
PER_REQUEST = 512
ROLLOUTS_PER_REQUEST = 8
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
PROTOBUF = {"content-type": "application/x-protobuf"}


def payloads(seed: int, ids: list[tuple[str, str]] | None = None) -> list[bytes]:
    return [
        genai_request(
            PER_REQUEST, rollouts=ROLLOUTS_PER_REQUEST, seed=seed + i, ids=ids
        ).SerializeToString()
        for i in range(SPANS // PER_REQUEST)
    ]


def http_sender(client: httpx.Client, url: str):
    def send(body: bytes) -> None:
        response = client.post(url, content=body, headers=PROTOBUF)
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:200]}")

    return send


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        runs: list[Run] = []
        receiver = ReceiverProcess(tmpdir / "bench.db").start()
        try:
            with httpx.Client(timeout=60) as client:
                body = payloads(1_000_000)
                say(
                    f"payload: {PER_REQUEST} spans a request,"
                    f" {len(body[0]) / PER_REQUEST:.0f} bytes a span"
                )
                runs.append(
                    timed(
                        "lightning-otlp  OTLP/HTTP protobuf -> SQLite",
                        body,
                        PER_REQUEST,
                        http_sender(client, receiver.traces_url),
                    )
                )
                say(runs[-1].line())
            body = payloads(2_000_000)
            with grpc.insecure_channel(receiver.grpc_target) as channel:
                export = channel.unary_unary(EXPORT)
                runs.append(
                    timed(
                        "lightning-otlp  OTLP/gRPC -> SQLite",
                        body,
                        PER_REQUEST,
                        lambda b: export(b, timeout=60),
                    )
                )
                say(runs[-1].line())
        finally:
            receiver.stop()
        with agl_store(tmpdir / "agl.log") as base:
            with httpx.Client(timeout=120) as client:
                ids = []
                for _ in range(ROLLOUTS_PER_REQUEST):
                    r = client.post(base + "/v1/agl/rollouts", json={"input": {"task": "bench"}})
                    r.raise_for_status()
                    ids.append((r.json()["rollout_id"], r.json()["attempt"]["attempt_id"]))
                # Upstream only takes spans of rollouts it knows: point them at real ones.
                body = payloads(3_000_000, ids)
                runs.append(
                    timed(
                        "agl store 0.3.0  OTLP/HTTP protobuf -> memory",
                        body,
                        PER_REQUEST,
                        http_sender(client, base + "/v1/traces"),
                    )
                )
                say(runs[-1].line())
        upstream = runs[-1].rate
        for run in runs[:-1]:
            say(f"ratio {run.label.split('  ')[1]:<28} {run.rate / upstream:5.1f}x upstream")
