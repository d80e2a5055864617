"""Agent Lightning's own dashboard, served by ``lightning-otlp serve --dashboard``, in headless
Chromium: the rollout list, one rollout's attempts and its spans are shown.

The dashboard directory comes from the agentlightning 0.3.0 environment (``make agl-env``); the
browser is Debian's ``chromium`` driven by playwright-core (``make browser``). The test saves
its screenshots beside its other files; with ``UPDATE_SCREENSHOTS=1`` it also refreshes
``docs/dashboard.png`` and ``docs/dashboard-spans.png``, which the README shows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import NODE_DIR, ROOT, ReceiverProcess, agl_python, node_script

pytestmark = [pytest.mark.e2e, pytest.mark.agl, pytest.mark.node, pytest.mark.browser]

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def dashboard_dir() -> Path:
    site = subprocess.run(
        [agl_python(), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return Path(site) / "agentlightning" / "dashboard"


def span(rollout_id: str, attempt_id: str, seq: int, name: str, **attrs: Any) -> dict[str, Any]:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    span_id = f"{seq:016x}"
    return {
        "rollout_id": rollout_id,
        "attempt_id": attempt_id,
        "sequence_id": seq,
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_id": None if seq == 1 else f"{1:016x}",
        "name": name,
        "status": {"status_code": "OK", "description": None},
        "attributes": attrs,
        "events": [],
        "links": [],
        "start_time": 1_764_000_000.0 + seq,
        "end_time": 1_764_000_000.8 + seq,
        "context": {
            "trace_id": trace_id,
            "span_id": span_id,
            "is_remote": False,
            "trace_state": {},
        },
        "parent": None,
        "resource": {"attributes": {"service.name": "math-agent"}, "schema_url": ""},
    }


def populate(base: str, headers: dict[str, str] | None = None) -> tuple[str, str]:
    """A few rollouts in every state; returns the one to open and its latest attempt."""
    http = httpx.Client(base_url=base + "/v1/agl", timeout=30, headers=headers)
    http.post(
        "/resources",
        json={
            "main_llm": {
                "resource_type": "llm",
                "endpoint": "http://vllm:8000/v1",
                "model": "qwen2.5-1.5b",
            }
        },
    )
    retry = {"max_attempts": 2, "retry_condition": ["failed"]}
    rollouts = [{"input": {"question": f"What is {i} + {i}?"}, "mode": "train"} for i in range(5)]
    rollouts[0]["config"] = retry
    http.post("/queues/rollouts/enqueue", json={"rollouts": rollouts})
    first = http.post("/queues/rollouts/dequeue", json={"worker_id": "runner-0"}).json()[0]
    rollout_id = first["rollout_id"]
    http.post(f"/rollouts/{rollout_id}/attempts/latest", json={"status": "failed"})
    again = http.post("/queues/rollouts/dequeue", json={"worker_id": "runner-1", "limit": 5}).json()
    retried = next(r for r in again if r["rollout_id"] == rollout_id)
    attempt_id = retried["attempt"]["attempt_id"]
    spans = [
        span(rollout_id, attempt_id, 1, "agent.run"),
        span(
            rollout_id,
            attempt_id,
            2,
            "openai.chat.completion",
            **{"gen_ai.prompt.0.role": "user", "gen_ai.prompt.0.content": "What is 0 + 0?"},
        ),
        span(
            rollout_id,
            attempt_id,
            3,
            "agentlightning.annotation",
            **{"agentlightning.reward.0.value": 1.0},
        ),
    ]
    for s in spans:
        assert http.post("/spans", json=s).status_code == 201
    http.post(f"/rollouts/{rollout_id}/attempts/{attempt_id}", json={"status": "succeeded"})
    for other in again:
        if other["rollout_id"] != rollout_id:
            http.post(
                f"/rollouts/{other['rollout_id']}/attempts/latest", json={"status": "running"}
            )
    http.post("/workers/runner-0", json={"heartbeat_stats": {"cpu": 0.5}})
    return rollout_id, attempt_id


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_dashboard_shows_rollouts_attempts_and_spans(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    store = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    receiver = ReceiverProcess(
        tmp_path / "store.db", "--dashboard", str(dashboard_dir()), store=store
    ).start()
    try:
        rollout_id, attempt_id = populate(receiver.http_url)
        report = open_dashboard(receiver, rollout_id, attempt_id, tmp_path)
    finally:
        assert receiver.stop() == 0
    check_pages(report, rollout_id, attempt_id)
    if os.environ.get("UPDATE_SCREENSHOTS") == "1" and backend == "sqlite":
        docs = ROOT / "docs"
        docs.mkdir(exist_ok=True)
        shutil.copyfile(report["screenshots"][1], docs / "dashboard.png")
        shutil.copyfile(report["screenshots"][2], docs / "dashboard-spans.png")
    assert "Traceback" not in receiver.log()


def test_with_auth_a_person_signs_in_with_the_token(tmp_path: Path) -> None:
    """Nothing of the store is shown before the token is entered; after, the same pages."""
    tokens = tmp_path / "tokens"
    tokens.write_text("dashboard-s3cret\n")
    receiver = ReceiverProcess(
        tmp_path / "store.db",
        "--dashboard",
        str(dashboard_dir()),
        "--auth-token-file",
        str(tokens),
    ).start()
    try:
        headers = {"authorization": "Bearer dashboard-s3cret"}
        rollout_id, attempt_id = populate(receiver.http_url, headers)
        assert httpx.get(receiver.http_url + "/rollouts").status_code == 401
        report = open_dashboard(
            receiver, rollout_id, attempt_id, tmp_path, token="dashboard-s3cret"
        )
    finally:
        assert receiver.stop() == 0
    assert rollout_id not in report["found"]["signIn"]
    assert "unknown token" in report["found"]["wrongToken"]
    check_pages(report, rollout_id, attempt_id)
    assert "Traceback" not in receiver.log()


def open_dashboard(
    receiver: ReceiverProcess,
    rollout_id: str,
    attempt_id: str,
    tmp_path: Path,
    token: str | None = None,
) -> Any:
    """tests/node/dashboard.js in headless Chromium: what each page showed."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: run `make browser` (Debian's chromium package)")
    node_script("dashboard.js")
    done = subprocess.run(
        [
            "node",
            "dashboard.js",
            receiver.http_url,
            rollout_id,
            attempt_id,
            "openai.chat.completion",
            str(tmp_path),
        ],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=180,
        env={
            **os.environ,
            "CHROMIUM": CHROMIUM,
            **({"DASHBOARD_TOKEN": token} if token else {}),
        },
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_pages(report: Any, rollout_id: str, attempt_id: str) -> None:
    assert report["failed"] == []  # every /v1/agl call the dashboard made was answered
    found = report["found"]
    assert rollout_id in found["rollouts"]
    assert "succeeded" in found["rollouts"].lower()
    assert attempt_id in found["attempts"]
    assert "openai.chat.completion" in found["spans"] and "agent.run" in found["spans"]
    for shot in report["screenshots"]:
        assert Path(shot).stat().st_size > 10_000
