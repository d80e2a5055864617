"""Forwarding openai-v2's default mode, logs exported after spans, into a real ``agl store``.

The agent (real OpenAI SDK, real openai-v2 instrumentation, real OTel SDK) flushes its spans,
the receiver is killed (-9) and started again, and only then does the agent flush its log
records. A trainer reading the server with agentlightning's own ``LightningStoreClient`` and
``TracerTraceToTriplet`` must still get each call's prompt and response text.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .genai.fake_model import FakeModelServer
from .genai.triplets import adapt_from_server
from .support import ReceiverProcess, free_port
from .test_e2e_genai import AGENT, check_rollout, genai_python

pytestmark = [pytest.mark.e2e, pytest.mark.genai, pytest.mark.agl]


@pytest.fixture(scope="module")
def model() -> Iterator[FakeModelServer]:
    with FakeModelServer() as server:
        yield server


def test_log_records_exported_after_their_spans_reach_the_server(
    model: FakeModelServer, tmp_path: Path
) -> None:
    from bench.common import agl_store
    from lightning_otlp.forward.status import store_status

    http = free_port()
    with agl_store(tmp_path / "agl.log") as base, httpx.Client(base_url=base, timeout=30) as agl:
        url = f"agl+{base}?outbox={tmp_path / 'outbox.db'}&max_backoff=0.5"
        # Long enough to outlast the restart below: the response record ends the wait.
        flags = ("--store", url, "--http", f"127.0.0.1:{http}", "--forward-log-wait", "120")
        receiver = ReceiverProcess(tmp_path / "receiver.db", *flags).start()
        try:
            created = agl.post("/v1/agl/rollouts", json={"input": {"task": "weather"}})
            assert created.status_code == 201, created.text
            rollout = created.json()
            agent = subprocess.Popen(
                [genai_python(), str(AGENT), "openai-v2", "--model-url", model.base_url]
                + ["--endpoint", f"http://127.0.0.1:{http}", "--protocol", "http"]
                + ["--rollout-id", rollout["rollout_id"]]
                + ["--attempt-id", rollout["attempt"]["attempt_id"]]
                + ["--spans-first", "--pause"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            assert agent.stdout is not None and agent.stdin is not None
            assert agent.stdout.readline().strip() == "paused"  # every span acknowledged
            receiver.kill()
            receiver.start()
            agent.stdin.write("\n")  # now the log records
            agent.stdin.flush()
            out, err = agent.communicate(timeout=60)
            assert agent.returncode == 0, err
            assert json.loads(out.strip().splitlines()[-1])["rollout_id"] == rollout["rollout_id"]
            deadline = time.monotonic() + 90
            while store_status(url, probe=False)["pending_spans"] and time.monotonic() < deadline:
                time.sleep(0.2)
            status = store_status(url, probe=False)
        finally:
            assert receiver.stop() == 0, receiver.log()
        assert status["pending_spans"] == 0 and status["held_spans"] == 0
        assert status["late_logs"] == 0
        result = adapt_from_server(base, [rollout["rollout_id"]])
    check_rollout(result[rollout["rollout_id"]], rewards=[0.5, 1.0], token_ids=False)
