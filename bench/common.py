"""Pieces the benchmarks share: payloads, an upstream ``agl store``, timing and reporting."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
AGL_PYTHON = os.environ.get("AGL_PYTHON") or str(ROOT / ".cache" / "agl-0.3.0" / "bin" / "python")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def agl_store(log_path: Path) -> Iterator[str]:
    """Upstream's LightningStore server (in-memory) on a free loopback port; yields its URL."""
    port = free_port()
    agl = str(Path(AGL_PYTHON).parent / "agl")
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [agl, "store", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/v1/agl/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"agl store did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass
class Run:
    label: str
    spans: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.spans / self.seconds

    def line(self) -> str:
        lat = sorted(self.latencies)
        p50 = statistics.median(lat) * 1000
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        return (
            f"{self.label:<44} {self.rate:>10,.0f} spans/s   p50 {p50:7.1f} ms   p99 {p99:7.1f} ms"
            f"   ({self.spans:,} spans, {len(lat)} requests, {self.seconds:.1f} s)"
        )


def timed(label: str, payloads: list[bytes], spans_each: int, send: Callable[[bytes], None]) -> Run:
    latencies = []
    started = time.perf_counter()
    for body in payloads:
        t0 = time.perf_counter()
        send(body)
        latencies.append(time.perf_counter() - t0)
    return Run(label, spans_each * len(payloads), time.perf_counter() - started, latencies)


def say(text: str) -> None:
    print(text, flush=True)
    sys.stdout.flush()
