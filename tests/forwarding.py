"""What the forwarding tests share: ``agl store`` 0.3.0 in a subprocess, and the checks they
make of a forwarder's outbox and of the server."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest as PB2ExportTraceServiceRequest,
)

from lightning_otlp.forward.status import store_status

from .support import ReceiverProcess, agl_python, free_port, wait_until

PROTOBUF = {"content-type": "application/x-protobuf"}


class AglServer:
    """``agl store`` (the upstream in-memory LightningStore server) in a subprocess."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def start(self, timeout: float = 90.0) -> None:
        agl = Path(agl_python()).parent / "agl"
        log = open(self.log_path, "ab")  # kept open for the process's life
        self.proc = subprocess.Popen(
            [str(agl), "store", "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=log,
            stderr=log,
            env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
            try:
                if self.http.get("/v1/agl/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"agl store did not start:\n{self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def forward_url(self, outbox: Path, **options: Any) -> str:
        query = "&".join(f"{k}={v}" for k, v in {"max_backoff": 0.5, **options}.items())
        return f"agl+http://127.0.0.1:{self.port}?outbox={outbox}&{query}"

    # REST reads and writes, as a runner or trainer would make them.
    def create_rollout(self, **body: Any) -> dict[str, Any]:
        response = self.http.post("/v1/agl/rollouts", json={"input": None, **body})
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    def rollouts(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.http.get("/v1/agl/rollouts").json()["items"]
        return items

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        found = self.http.get("/v1/agl/rollouts", params={"rollout_id_in": [rollout_id]}).json()
        assert found["items"], f"server has no rollout {rollout_id}"
        item: dict[str, Any] = found["items"][0]
        return item

    def attempts(self, rollout_id: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.http.get(
            f"/v1/agl/rollouts/{rollout_id}/attempts"
        ).json()["items"]
        return items

    def spans(self, rollout_id: str, attempt_id: str | None = None) -> list[dict[str, Any]]:
        params = {"rollout_id": rollout_id}
        if attempt_id is not None:
            params["attempt_id"] = attempt_id
        response = self.http.get("/v1/agl/spans", params=params)
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    def linked(self, local_rollout_id: str) -> dict[str, Any]:
        """The server rollout the forwarder created for a receiver's rollout."""
        found = [
            r
            for r in self.rollouts()
            if ((r.get("metadata") or {}).get("lightning_otlp") or {}).get("rollout_id")
            == local_rollout_id
        ]
        assert len(found) == 1, f"{len(found)} server rollouts for {local_rollout_id}"
        return found[0]


def drained(url: str, forwarded: int, timeout: float = 90.0) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        report = store_status(url, probe=False)
        done = report["pending_spans"] == 0 and report["forwarded_spans"] >= forwarded
        return report if done else None

    report: dict[str, Any] = wait_until(check, f"{forwarded} spans forwarded", timeout, 0.1)
    return report


def cli_status(url: str) -> dict[str, Any]:
    """``lightning-otlp status --json``, as an operator would run it."""
    out = subprocess.run(
        [sys.executable, "-m", "lightning_otlp", "status", "--store", url, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    report: dict[str, Any] = json.loads(out.stdout)
    return report


def local_rollouts(url: str) -> list[str]:
    """The receiver's own rollout ids, read from its outbox."""
    path = url.split("outbox=")[1].split("&")[0]
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT rollout_id FROM rollouts ORDER BY rowid")]


def post(receiver: ReceiverProcess, request: PB2ExportTraceServiceRequest) -> httpx.Response:
    return httpx.post(
        receiver.traces_url, content=request.SerializeToString(), headers=PROTOBUF, timeout=30
    )


def identities(spans: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(s["trace_id"], s["span_id"]) for s in spans]


def sent_identities(request: PB2ExportTraceServiceRequest) -> set[tuple[str, str]]:
    return {
        (span.trace_id.hex(), span.span_id.hex())
        for rs in request.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    }


def assert_in_order(spans: list[dict[str, Any]]) -> None:
    """One attempt's spans: distinct sequence ids, increasing with start time."""
    seqs = [s["sequence_id"] for s in spans]
    assert len(set(seqs)) == len(seqs)
    by_seq = sorted(spans, key=lambda s: s["sequence_id"])
    starts = [s["start_time"] for s in by_seq]
    assert starts == sorted(starts)
