"""The agent-side SDK installs and imports without the receiver's dependencies."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVER_MODULES = (
    "grpc",
    "uvicorn",
    "httpx",
    "httptools",
    "uvloop",
    "opentelemetry.proto",
    "google.rpc",
)

USE_SDK = """
import sys
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
import lightning_otlp

provider = TracerProvider()
provider.add_span_processor(lightning_otlp.RolloutSpanProcessor())
exporter = InMemorySpanExporter()
provider.add_span_processor(SimpleSpanProcessor(exporter))
with lightning_otlp.rollout(tracer_provider=provider) as ids:
    provider.get_tracer("agent").start_span("step").end()
step = next(s for s in exporter.get_finished_spans() if s.name == "step")
assert step.attributes["agentlightning.rollout_id"] == ids.rollout_id
loaded = sorted(m for m in {MODULES} if m in sys.modules)
assert not loaded, loaded
print("sdk ok")
""".replace("{MODULES}", repr(SERVER_MODULES))


def test_importing_the_sdk_loads_no_server_module() -> None:
    result = subprocess.run(
        [sys.executable, "-c", USE_SDK], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "sdk ok" in result.stdout


@pytest.mark.e2e
@pytest.mark.slow
def test_sdk_only_install_works_and_serve_says_what_is_missing(tmp_path: Path) -> None:
    """``pip install lightning-otlp`` (no extra) in a fresh venv: the SDK works, serve explains."""
    env_dir = tmp_path / "sdk-only"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr
    missing = subprocess.run(
        [str(python), "-c", "import grpc"], capture_output=True, text=True, timeout=60
    )
    assert missing.returncode != 0  # the server's dependencies were not installed
    used = subprocess.run(
        [str(python), "-c", USE_SDK], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert used.returncode == 0, used.stderr
    serve = subprocess.run(
        [str(env_dir / "bin" / "lightning-otlp"), "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert serve.returncode == 2
    assert "pip install 'lightning-otlp[server]'" in serve.stderr
    assert "Traceback" not in serve.stderr
