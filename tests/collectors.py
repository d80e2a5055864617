"""Helpers for the tests that run real Collectors, Go programs and Java programs.

Everything they run is built by the Makefile into the git-ignored ``.cache/`` (``make collector
go-agent java-deps``); a missing build is an error that says which target makes it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from .support import ROOT, free_port, wait_until

CACHE = ROOT / ".cache"
OTELCOL_VERSION = "0.136.0"
OTELCOL = CACHE / "otelcol" / OTELCOL_VERSION / "otelcol-lightning" / "otelcol-lightning"
GO_AGENT_BIN = CACHE / "go-agent" / "bin"
JAVAAGENT_VERSION = "2.33.1"
JAVAAGENT = CACHE / "java" / f"opentelemetry-javaagent-{JAVAAGENT_VERSION}.jar"
JAVA_EXAMPLES = ROOT / "examples" / "java-agent"
JAVA_SERVICE_CLASSES = CACHE / "java" / "classes"
JAVA_SDK_CLASSPATH = JAVA_EXAMPLES / "sdk" / "target" / "classpath.txt"
CONFIG_DIR = ROOT / "collector-config"
# A Python runner that sends its rollout ids to an agent service in W3C Baggage.
BAGGAGE_RUNNER = ROOT / "tests" / "clients" / "baggage_runner.py"


def built(path: Path, target: str) -> Path:
    """``path`` after checking that ``make target`` built it."""
    if not path.exists():
        raise RuntimeError(f"{path} is missing: run `make {target}`")
    return path


def prometheus(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` (with ``_total`` or not) whose labels match."""
    total = 0.0
    for line in text.splitlines():
        found = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not found or found.group(1) not in (name, name + "_total"):
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', found.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(found.group(3))
    return total


class CollectorProcess:
    """The Collector built from ``collector-config/builder-config.yaml``, run on one of the
    project's configs plus an overlay that only moves it to free loopback ports and a test
    directory (the Collector merges ``--config`` files in order)."""

    def __init__(
        self, config: str, workdir: Path, overlay: dict[str, Any], env: dict[str, str]
    ) -> None:
        self.binary = built(OTELCOL, "collector")
        self.config = CONFIG_DIR / config
        self.workdir = workdir
        self.env = env
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.health_port = free_port()
        self.metrics_port = free_port()
        base: dict[str, Any] = {
            "extensions": {"health_check": {"endpoint": f"127.0.0.1:{self.health_port}"}},
            "receivers": {
                "otlp": {
                    "protocols": {
                        "grpc": {"endpoint": f"127.0.0.1:{self.grpc_port}"},
                        "http": {"endpoint": f"127.0.0.1:{self.http_port}"},
                    }
                }
            },
            "service": {
                "telemetry": {
                    "logs": {"level": "info"},
                    "metrics": {
                        "level": "detailed",
                        "readers": [
                            {
                                "pull": {
                                    "exporter": {
                                        "prometheus": {
                                            "host": "127.0.0.1",
                                            "port": self.metrics_port,
                                        }
                                    }
                                }
                            }
                        ],
                    },
                }
            },
        }
        self.overlay_path = workdir / f"{Path(config).stem}-overlay.yaml"
        self.overlay_path.write_text(yaml.safe_dump(_merge(base, overlay)))
        self.log_path = workdir / f"{Path(config).stem}-collector.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(timeout=5)

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 60.0) -> CollectorProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process's life
        self.proc = subprocess.Popen(
            [str(self.binary), "--config", str(self.config), "--config", str(self.overlay_path)],
            stdout=log,
            stderr=log,
            env={**os.environ, **self.env},
        )
        wait_until(self._healthy, f"the Collector on {self.config.name} to be healthy", timeout)
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the Collector exited:\n{self.log()[-4000:]}")
        try:
            return self.http.get(f"http://127.0.0.1:{self.health_port}/").status_code == 200
        except httpx.HTTPError:
            return False

    def health(self) -> int:
        return self.http.get(f"http://127.0.0.1:{self.health_port}/").status_code

    def metrics(self) -> str:
        return self.http.get(f"http://127.0.0.1:{self.metrics_port}/metrics").text

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM: the Collector drains its pipeline into the queue and exits."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        self.stop()
        self.http.close()


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def start_service(
    args: list[str], env: dict[str, str], log_path: Path, timeout: float = 120.0
) -> tuple[subprocess.Popen[bytes], str]:
    """An example agent service that prints ``listening on URL`` once it serves."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            args, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        found = re.search(r"listening on (\S+)", log_path.read_text(errors="replace"))
        if found:
            return proc, found.group(1)
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{args[0]} did not start:\n{log_path.read_text(errors='replace')}")


def stop_service(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM, so the service flushes its batched spans; its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode
