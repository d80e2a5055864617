"""A training-shaped run against ``lightning-otlp serve``, killed with SIGKILL mid-run.

Agent Lightning 0.3.0's own pieces, no mock: its Trainer with an external store
(``LightningStoreClient`` at the receiver's URL), an algorithm that enqueues rollouts and waits,
two runner processes running a ``LitAgent`` traced by ``OtelTracer`` over OTLP, and
``TracerTraceToTriplet`` on the spans read back. A TypeScript runner with only the stock
OpenTelemetry SDK takes rollouts from the same queue. The receiver is killed (``kill -9``) once
some rollouts have finished and restarted on the same port and file: every rollout must still
succeed, with each span stored exactly once and one triplet carrying its reward.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import NODE_DIR, ROOT, ReceiverProcess, agl_python, free_port, node_script

pytestmark = [pytest.mark.e2e, pytest.mark.agl, pytest.mark.node, pytest.mark.api]

TRAINING = ROOT / "tests" / "clients" / "agl_training.py"
ROLLOUTS = 30
# Each agent, Python or TypeScript, makes these spans once per rollout.
SPANS = Counter(["openai.chat.completion", "agent.run", "agentlightning.annotation"])
UNFINISHED = ["queuing", "preparing", "running", "requeuing"]


def _wait_for(path: Path, at_least: int, proc: subprocess.Popen[str], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the training run ended before the receiver was killed"
        if path.exists() and path.read_text().strip():
            done = int(path.read_text())
            if done >= at_least:
                return done
        time.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} rollouts finished in {timeout} s")


def test_training_run_survives_kill_9(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    flags = ("--http", f"127.0.0.1:{port}", "--watchdog-interval", "1")
    receiver = ReceiverProcess(tmp_path / "store.db", *flags).start()
    progress = tmp_path / "progress"
    stop = tmp_path / "stop-ts-runner"
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    with open(tmp_path / "training.log", "w") as log:
        training = subprocess.Popen(
            [agl_python(), str(TRAINING), url, str(ROLLOUTS), "2", str(progress)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
        )
    node_script("agl_runner.ts")
    ts_runner: subprocess.Popen[str] | None = None
    try:
        # The TypeScript runner joins once the Python runners (slow to import) are at work.
        _wait_for(progress, 2, training, timeout=400)
        with open(tmp_path / "ts-runner.log", "w") as log:
            ts_runner = subprocess.Popen(
                [str(NODE_DIR / "node_modules" / ".bin" / "tsx"), "agl_runner.ts", url, str(stop)],
                cwd=NODE_DIR,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        done_before = _wait_for(progress, 8, training, timeout=120)
        receiver.kill()
        assert done_before < ROLLOUTS, "the run finished before the kill: nothing was tested"
        time.sleep(1.0)
        receiver.start()
        out, _ = training.communicate(timeout=300)
    finally:
        stop.touch()
        if training.poll() is None:
            training.kill()
        ts_out = ts_runner.communicate(timeout=60)[0] if ts_runner is not None else ""
        receiver.stop()
    assert training.returncode == 0, (tmp_path / "training.log").read_text()[-5000:]
    assert ts_runner is not None and ts_runner.returncode == 0, (
        tmp_path / "ts-runner.log"
    ).read_text()[-3000:]
    ts_done = json.loads(ts_out.strip().splitlines()[-1])["rollouts"]
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])

    assert len(result) == ROLLOUTS
    workers = Counter(r["worker"] for r in result.values())
    assert workers["ts-runner"] == ts_done > 0, workers  # the TypeScript agent took part
    assert sum(n for w, n in workers.items() if w != "ts-runner") > 0
    for rollout_id, r in result.items():
        assert r["status"] == "succeeded", (rollout_id, r)
        assert r["attempts"][-1] == "succeeded", (rollout_id, r)
        names = Counter(name for name, *_ in r["spans"])
        assert names == SPANS, (rollout_id, r["spans"])
        ids = [(trace_id, span_id) for _, trace_id, span_id, _ in r["spans"]]
        assert len(set(ids)) == len(ids), f"{rollout_id}: a span stored twice"
        sequence = [seq for *_, seq in r["spans"]]
        assert len(set(sequence)) == len(sequence), f"{rollout_id}: a sequence id reused"
        task = r["input"]
        [triplet] = r["triplets"]
        assert triplet["reward"] == pytest.approx(task["reward"])
        assert triplet["prompt"]["token_ids"] == [1, 2, 3]
        assert triplet["response"]["token_ids"] == [4, 5]
        assert triplet["prompt"]["raw_content"][0]["content"] == task["question"]

    # Nothing left behind in the store itself: no rollout stuck, none lost.
    restarted = ReceiverProcess(tmp_path / "store.db").start()
    try:
        page = httpx.post(
            restarted.http_url + "/v1/agl/rollouts/search", json={"status_in": UNFINISHED}
        ).json()
        assert page["total"] == 0, page["items"]
        everything = httpx.get(restarted.http_url + "/v1/agl/rollouts").json()
        assert everything["total"] == ROLLOUTS
    finally:
        assert restarted.stop() == 0
    assert "Traceback" not in receiver.log()
