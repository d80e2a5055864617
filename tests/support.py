"""Shared test helpers: a real receiver in a subprocess, and agentlightning's own validators."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from lightning_otlp.store import SQLiteStore

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "tests" / "node"
_LISTEN = re.compile(r"(OTLP/gRPC|OTLP/HTTP|health) listening on (?:(https?)://)?([^\s/]+)")
# Below Linux's ephemeral range (32768-60999): no outgoing connection of a test running beside
# this one takes a port between its choice here and its server's bind.
_PORTS = range(20000, 32768)
_GIVEN: set[int] = set()
# The number of pytest-xdist workers; each takes every _WORKERS-th port of the range.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)


class Clock:
    """A clock a test moves on by hand (``advance``), for code that takes one: deadlines pass
    without the test waiting for them, however busy the machine is."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def free_port() -> int:
    """A loopback port free now, for a server that cannot bind port 0 and report what it got;
    never the same one twice in a run, and each pytest-xdist worker picks from its own share."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index, count = (int(worker) if worker.isdigit() else 0), _WORKERS
    share = _PORTS[index % count :: count]
    while True:
        port = random.choice(share)
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port


class ReceiverProcess:
    """``lightning-otlp serve`` in a subprocess on free loopback ports, as a user would run it."""

    def __init__(
        self,
        db_path: Path,
        *flags: str,
        env: dict[str, str] | None = None,
        python: str = sys.executable,
        store: str | None = None,
    ) -> None:
        self.python = python  # another environment's, to run an installed release
        self.db_path = db_path  # the SQLite file, unless ``store`` names another store
        self.store_url = store or f"sqlite:///{db_path}"
        self.flags = flags
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.grpc_target = ""
        self.http_url = ""
        self.health_url = ""
        self.log_path = db_path.with_suffix(".log")
        self._offset = 0

    def start(self, timeout: float = 20.0) -> ReceiverProcess:
        return self.launch().wait_started(timeout)

    def launch(self) -> ReceiverProcess:
        """Start the process without waiting, so several can start side by side."""
        args = [self.python, "-m", "lightning_otlp", "serve", "--store", self.store_url]
        if "--grpc" not in self.flags:
            args += ["--grpc", "127.0.0.1:0"]
        if "--http" not in self.flags:
            args += ["--http", "127.0.0.1:0"]
        if "--health" not in self.flags:
            args += ["--health", "127.0.0.1:0"]
        args += list(self.flags)
        env = {**os.environ, **(self.env or {})}
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "a")  # kept open for the process's life
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, text=True, env=env)
        return self

    def wait_started(self, timeout: float = 20.0) -> ReceiverProcess:
        """Wait until the receiver says it listens and has opened its store."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()[self._offset :]  # this run's lines only, if the log is reused
            found = {m.group(1): m for m in _LISTEN.finditer(text)}
            if "OTLP/gRPC" in found and "OTLP/HTTP" in found and "store:" in text:
                self.grpc_target = found["OTLP/gRPC"].group(3)
                http = found["OTLP/HTTP"]
                self.http_url = f"{http.group(2)}://{http.group(3)}"
                if "health" in found:
                    self.health_url = "http://" + found["health"].group(3)
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"receiver did not start:\n{self.log_path.read_text()}")

    @property
    def traces_url(self) -> str:
        return self.http_url + "/v1/traces"

    def ready(self) -> bool:
        """Whether ``/health/ready`` on the health port answers 200 now."""
        import httpx

        try:
            return httpx.get(self.health_url + "/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        """SIGKILL: no chance to flush anything."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text()

    # Reads go straight to the SQLite file, as the CLI does.
    def spans(self, rollout_id: str | None = None, *, raw: bool = True) -> list[dict[str, Any]]:
        """Spans as received (``raw``), or model calls in Agent Lightning's shape as users read."""
        return list(_read(self.db_path, lambda s: s.spans(rollout_id, raw=raw)))

    def rollouts(self) -> list[dict[str, Any]]:
        return list(_read(self.db_path, lambda s: s.rollouts()))

    def wait_for_spans(self, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        spans: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            spans = self.spans() if self.db_path.exists() else []
            if len(spans) >= count:
                return spans
            time.sleep(0.1)
        raise AssertionError(f"expected {count} spans, found {len(spans)}:\n{self.log()}")


def module_receiver(tmp_path_factory: Any, name: str, *flags: str) -> Iterator[ReceiverProcess]:
    """A receiver for a whole test module; at the end it must stop cleanly, with no traceback."""
    proc = ReceiverProcess(tmp_path_factory.mktemp(name) / "receiver.db", *flags).start()
    yield proc
    assert proc.stop() == 0, proc.log()
    assert "Traceback" not in proc.log()


def _read(db_path: Path, fn: Any) -> Iterable[dict[str, Any]]:
    store = SQLiteStore(str(db_path))
    store.open()
    try:
        return list(fn(store))
    finally:
        store.close()


def agl_python() -> str:
    """The interpreter of the cached agentlightning 0.3.0 environment (``make agl-env``)."""
    path = os.environ.get("AGL_PYTHON") or str(ROOT / ".cache" / "agl-0.3.0" / "bin" / "python")
    if not Path(path).exists():
        raise RuntimeError(
            f"agentlightning 0.3.0 environment missing at {path}: run `make agl-env`"
        )
    return path


_VALIDATOR = r"""
import json, sys
from agentlightning.types import Attempt, AttemptedRollout, Rollout, Span
models = {
    "AttemptedRollout": AttemptedRollout, "Span": Span, "Rollout": Rollout, "Attempt": Attempt
}
for line in sys.stdin:
    request = json.loads(line)
    try:
        model = models[request["model"]]
        out = [json.loads(model.model_validate(r).model_dump_json()) for r in request["records"]]
        reply = {"ok": out}
    except Exception as exc:  # reported to the test, which fails with it
        reply = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
"""
_validator: subprocess.Popen[str] | None = None


def validate_with_agl(model: str, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validate records with agentlightning 0.3.0's own pydantic model; return its round trip.

    One agentlightning process serves the whole test session: importing it takes seconds.
    """
    global _validator
    if _validator is None or _validator.poll() is not None:
        _validator = subprocess.Popen(
            [agl_python(), "-c", _VALIDATOR],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        )
    assert _validator.stdin is not None and _validator.stdout is not None
    _validator.stdin.write(json.dumps({"model": model, "records": list(records)}) + "\n")
    _validator.stdin.flush()
    reply = json.loads(_validator.stdout.readline())
    if "error" in reply:
        raise AssertionError(f"agentlightning rejected a {model} record: {reply['error']}")
    validated: list[dict[str, Any]] = reply["ok"]
    return validated


def run_in_agl(code: str, payload: Any, timeout: float = 120.0) -> Any:
    """Run ``code`` in the agentlightning 0.3.0 environment with ``payload`` (JSON) on stdin.

    The snippet reads ``json.load(sys.stdin)`` and prints one JSON value as its last line, which
    is returned. A one-off process: it pays agentlightning's import time once per call.
    """
    done = subprocess.run(
        [agl_python(), "-c", code],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
    )
    if done.returncode != 0:
        raise AssertionError(f"agentlightning snippet failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def node_script(name: str) -> Path:
    """A script under tests/node, after checking ``make node-deps`` installed the SDK."""
    if not (NODE_DIR / "node_modules" / "@opentelemetry" / "sdk-trace-node").exists():
        raise RuntimeError("Node.js OpenTelemetry packages missing: run `make node-deps`")
    return NODE_DIR / name


EXAMPLE_AGENT = ROOT / "examples" / "typescript-agent" / "agent.js"
EXAMPLE_RUNNER = ROOT / "examples" / "python-runner" / "runner.py"


def start_example_agent(
    otlp_http_url: str, log_path: Path, timeout: float = 30.0
) -> tuple[subprocess.Popen[bytes], str]:
    """The example TypeScript agent on a free port, exporting to ``otlp_http_url``.

    It resolves its npm packages from tests/node (the same versions its package.json names).
    """
    node_script("agent.js")  # checks the Node.js packages are installed
    env = {
        **os.environ,
        "NODE_PATH": str(NODE_DIR / "node_modules"),
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_http_url,
        "PORT": "0",
    }
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            ["node", str(EXAMPLE_AGENT)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        found = re.search(r"listening on (\S+)", log_path.read_text())
        if found:
            return proc, found.group(1)
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"example agent did not start:\n{log_path.read_text()}")


class AglStore:
    """Upstream's ``agl store`` (in-memory LightningStore server) on a free loopback port."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 300.0) -> AglStore:
        import httpx

        agl = str(Path(agl_python()).parent / "agl")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [agl, "store", "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if httpx.get(self.url + "/v1/agl/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"agl store did not start:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def run_agl_script(
    script: Path, *args: str, timeout: float = 300.0, env: dict[str, str] | None = None
) -> Any:
    """Run a script under tests/clients with the agentlightning 0.3.0 interpreter; its last
    stdout line is JSON, returned."""
    done = subprocess.run(
        [agl_python(), str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", **(env or {})},
    )
    if done.returncode != 0:
        raise AssertionError(f"{script.name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def wait_until(condition: Any, what: str, timeout: float = 60.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
