"""The quick-start examples the README and the site show are the files these tests run, and they
work (tests/test_docs.py checks that the pages show exactly these files)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from .support import NODE_DIR, ROOT, ReceiverProcess, node_script, validate_with_agl

ROLLOUTS_TABLE = ROOT / "docs" / "snippets" / "rollouts-table.txt"


@pytest.mark.e2e
@pytest.mark.node
def test_typescript_quickstart(start_receiver: Callable[..., ReceiverProcess]) -> None:
    node_script("agent.js")
    receiver = start_receiver()
    env = {
        **os.environ,
        "NODE_PATH": str(NODE_DIR / "node_modules"),
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_url,
        "OTEL_RESOURCE_ATTRIBUTES": (
            "agentlightning.rollout_id=ro-0123456789ab,agentlightning.attempt_id=at-01234567"
        ),
    }
    done = subprocess.run(
        [str(NODE_DIR / "node_modules" / ".bin" / "tsx"), "quickstart.ts"],
        cwd=ROOT / "examples" / "typescript-agent",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    spans = receiver.wait_for_spans(2)
    assert {(s["name"], s["rollout_id"], s["attempt_id"]) for s in spans} == {
        ("agent run", "ro-0123456789ab", "at-01234567"),
        ("chat gpt-4o-mini", "ro-0123456789ab", "at-01234567"),
    }
    validate_with_agl("Span", spans)
    (rollout,) = receiver.rollouts()
    assert rollout["status"] == rollout["attempt"]["status"] == "succeeded"  # it says how it ended


@pytest.mark.e2e
def test_python_quickstart(start_receiver: Callable[..., ReceiverProcess]) -> None:
    receiver = start_receiver()
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_url}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    printed = done.stdout.split()
    rollouts = {r["rollout_id"]: r for r in receiver.rollouts()}
    assert set(printed) == set(rollouts) and len(printed) == 2
    for rollout in rollouts.values():
        assert rollout["status"] == "succeeded" and rollout["mode"] == "train"
    names = sorted(s["name"] for s in receiver.spans())
    assert names == sorted(
        [
            "agentlightning.rollout",
            "agentlightning.rollout.start",
            "solve",
            "agentlightning.annotation",
        ]
        * 2
    )
    # The table the site shows is what `lightning-otlp rollouts` prints after this run.
    table = subprocess.run(
        [sys.executable, "-m", "lightning_otlp", "rollouts", "--table"]
        + ["--store", receiver.store_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert table.returncode == 0, table.stderr
    shown = ROLLOUTS_TABLE.read_text().splitlines()
    printed_lines = table.stdout.splitlines()
    assert printed_lines[0] == shown[0] and printed_lines[-1] == shown[-1]
    columns = [1, 2, 3, 5, 6, 7]  # all but the rollout id and the duration, which vary
    assert sorted([line.split()[i] for i in columns] for line in printed_lines[1:-1]) == sorted(
        [line.split()[i] for i in columns] for line in shown[1:-1]
    )
