"""How long after a TypeScript agent's first span its trace's binding reaches the receiver.

The example runner starts rollouts and calls the example agent (both with their SDKs' default
batch settings: a span waits up to 5 s in the exporter's queue). Until the runner's binding
arrives, the agent's spans sit in a per-trace rollout; this measures that time, per trace, by
watching the store.
"""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

from bench.common import say
from tests.support import EXAMPLE_RUNNER, ReceiverProcess, start_example_agent

ROUNDS = int(os.environ.get("BENCH_AFFINITY_ROUNDS", "8"))


def watch(
    db: Path, stop: threading.Event, first_agent: dict[bytes, float], bound: dict[bytes, float]
) -> None:
    """Poll the store: when each trace's first agent span, and its binding, became visible."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    while not stop.is_set():
        now = time.monotonic()
        try:
            rows = conn.execute(
                "SELECT s.trace_id, r.origin, instr(res.body, '\"typescript-agent\"') > 0"
                " FROM spans s JOIN rollouts r ON r.rollout_id = s.rollout_id"
                " JOIN resources res ON res.resource_id = s.resource_id"
            ).fetchall()
        except sqlite3.OperationalError:
            rows = []
        for trace_id, origin, is_agent in rows:
            if is_agent:
                first_agent.setdefault(trace_id, now)
            if origin == "explicit":
                bound.setdefault(trace_id, now)
        time.sleep(0.02)
    conn.close()


def load_runner(endpoint: str) -> ModuleType:
    """The example runner as a module, its exporter pointed at ``endpoint``."""
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    spec = importlib.util.spec_from_file_location("example_runner", EXAMPLE_RUNNER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    delays: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        receiver = ReceiverProcess(tmpdir / "affinity.db").start()
        agent, url = start_example_agent(receiver.http_url, tmpdir / "agent.log")
        first_agent: dict[bytes, float] = {}
        bound: dict[bytes, float] = {}
        stop = threading.Event()
        watcher = threading.Thread(target=watch, args=(receiver.db_path, stop, first_agent, bound))
        watcher.start()
        try:
            # A long-lived runner, as in training: its exporter sends on its own 5 s schedule,
            # not at a shutdown right after the calls.
            runner = load_runner(receiver.http_url)
            with ThreadPoolExecutor(max_workers=20) as pool:
                for round_ in range(ROUNDS):
                    list(
                        pool.map(
                            lambda task: runner.run_one(url, *task),
                            [(f"What is {i} + {round_}?", i + round_) for i in range(20)],
                        )
                    )
                    time.sleep(1.7)  # rounds fall at different points of the exporters' cycles
            time.sleep(6)  # every exporter has sent
            runner.provider.shutdown()
        finally:
            stop.set()
            watcher.join()
            agent.terminate()
            agent.wait(20)
            receiver.stop()
    delays = [bound[t] - first_agent[t] for t in first_agent if t in bound]
    after = [d for d in delays if d > 0.02]
    say(
        f"traces: {len(delays)}; agent spans reached the receiver before their binding in"
        f" {len(after)} ({100 * len(after) / max(1, len(delays)):.0f}%)"
    )
    if after:
        say(
            f"binding after first agent span: median {statistics.median(after):.2f} s,"
            f" max {max(after):.2f} s (default batch delay 5 s on each side)"
        )
