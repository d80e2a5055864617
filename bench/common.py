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
    with agl_store_process(log_path) as (url, _):
        yield url


@contextmanager
def agl_store_process(log_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``agl_store``, also yielding the process (for its memory)."""
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
        yield url, proc
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


def peak_rss(pid: int) -> int:
    """A live process's peak resident set size in bytes (Linux ``VmHWM``); 0 where unknown."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a live process has used so far; 0 where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load() -> str:
    """The machine's load averages, printed with every figure (ratios hold, absolutes move)."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def chart_dir() -> Path | None:
    """Where benchmarks draw their charts (``bench/run.py --charts DIR``), or None."""
    value = os.environ.get("BENCH_CHARTS")
    return Path(value) if value else None


def bar_chart(
    name: str, title: str, unit: str, bars: dict[str, float], note: str = ""
) -> Path | None:
    """Draw one horizontal bar chart as ``<charts>/<name>.png`` when charts were asked for."""
    folder = chart_dir()
    if folder is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.5 * len(bars)))
    labels = list(bars)
    values = [bars[k] for k in labels]
    colors = ["#4c72b0" if k.startswith("lightning-otlp") else "#999999" for k in labels]
    ax.barh(labels, values, color=colors)
    ax.invert_yaxis()
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:,.1f}" if v < 100 else f" {v:,.0f}", va="center", fontsize=8)
    ax.set_xlabel(unit)
    ax.set_title(title, fontsize=10)
    ax.margins(x=0.2)
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, color="#555555")
    fig.tight_layout(rect=(0, 0.05 if note else 0, 1, 1))
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    say(f"chart: {path}")
    return path


def say(text: str) -> None:
    print(text, flush=True)
    sys.stdout.flush()
