"""The deployment page's Collector commands, run as written; the Collector as a user who is not
root.

The machine is shared, so every documented port is moved to a free one (the same substitution
in the command and, through one overlay file, in the Collector's OTLP and health ports); nothing
else changes. The user owns a copy of ``collector-config/`` in their own directory, as in a
clone of their own, and runs the documented commands from there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from .collectors import CACHE, OTELCOL, built
from .support import ROOT, free_port, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.collector]

SNIPPETS = ROOT / "docs" / "snippets"
BIN = Path(sys.executable).parent
NOBODY = 65534
IDS = "agentlightning.rollout_id=ro-0123456789ab,agentlightning.attempt_id=at-01234567"


class User:
    """A non-root user running documented commands in a directory of their own."""

    def __init__(self, home: Path) -> None:
        self.home = home
        home.chmod(0o777)
        shutil.copytree(ROOT / "collector-config", home / "collector-config")
        # The Collector built from builder-config.yaml, installed for the user as the official
        # release's name (the build's own folder is closed to other users).
        (home / "bin").mkdir()
        shutil.copy(built(OTELCOL, "collector"), home / "bin" / "otelcol-contrib")
        for path in [home, *home.rglob("*")]:
            os.chown(path, NOBODY, NOBODY)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports: dict[str, str] = {}

    def port(self, documented: str) -> str:
        """The free port standing in for a documented one (the same one on every line)."""
        return self.ports.setdefault(documented, str(free_port()))

    def moved(self, text: str) -> str:
        """``text`` with every documented loopback port moved to its free one."""
        return re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{self.port(m.group(1))}", text)

    def command(self, line: str) -> str:
        line = self.moved(line)
        return re.sub(r"^lightning-otlp ", f"{BIN / 'lightning-otlp'} ", line)

    def start(
        self, line: str, env: dict[str, str] | None = None, *, as_user: bool = True
    ) -> subprocess.Popen[bytes]:
        """Run ``line`` in the user's directory; ``as_user=False`` runs it as the test's own
        user (the project's venv lives under a home other users cannot enter)."""
        log = open(self.home / f"{len(self.procs)}.log", "wb")  # noqa: SIM115 - the process's
        who = {"user": NOBODY, "group": NOBODY, "extra_groups": []} if as_user else {}
        proc = subprocess.Popen(
            ["bash", "-c", "exec " + self.command(line)],
            cwd=self.home,
            env={
                "PATH": f"{self.home / 'bin'}:{os.environ['PATH']}",
                "HOME": str(self.home),
                **(env or {}),
            },
            stdout=log,
            stderr=subprocess.STDOUT,
            **who,  # type: ignore[arg-type]
        )
        self.procs.append(proc)
        return proc

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        return (self.home / f"{self.procs.index(proc)}.log").read_text(errors="replace")

    def overlay(self, name: str) -> Path:
        """Moves a Collector config's own OTLP and health ports to free ones."""
        ports = {p: str(free_port()) for p in ("grpc", "http", "health")}
        self.ports.update({f"{name}-{k}": v for k, v in ports.items()})
        path = self.home / f"{name}-ports.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "extensions": {"health_check": {"endpoint": f"127.0.0.1:{ports['health']}"}},
                    "receivers": {
                        "otlp": {
                            "protocols": {
                                "grpc": {"endpoint": f"127.0.0.1:{ports['grpc']}"},
                                "http": {"endpoint": f"127.0.0.1:{ports['http']}"},
                            }
                        }
                    },
                }
            )
        )
        return path

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def user() -> Iterator[User]:
    # pytest's own temp folders are closed to other users: a home in the system's temp folder
    home = Path(tempfile.mkdtemp(prefix="lightning-otlp-user-"))
    person = User(home)
    try:
        yield person
    finally:
        person.stop()
        shutil.rmtree(home, ignore_errors=True)


def lines(snippet: str) -> list[str]:
    text = (SNIPPETS / snippet).read_text().replace("\\\n", " ")
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def healthy(url: str, proc: subprocess.Popen[bytes], user: User) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"exited {proc.returncode}:\n{user.log(proc)[-3000:]}")
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def send_span(grpc_port: str, name: str) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "docs-agent"}))
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"127.0.0.1:{grpc_port}", insecure=True))
    )
    span = provider.get_tracer("docs").start_span(name)
    span.set_attribute("agentlightning.rollout_id", "ro-0123456789ab")
    span.set_attribute("agentlightning.attempt_id", "at-01234567")
    span.end()
    provider.shutdown()


def stored_names(store: Path) -> list[str]:
    if not store.exists():
        return []
    done = subprocess.run(
        [str(BIN / "lightning-otlp"), "spans", "--store", f"sqlite:///{store}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return [json.loads(line)["name"] for line in done.stdout.splitlines()]


def start_receiver_as_written(user: User, line: str) -> subprocess.Popen[bytes]:
    proc = user.start(line, as_user=False)
    health = re.search(r"--health 127\.0\.0\.1:(\d+)", line)
    assert health
    url = f"http://127.0.0.1:{user.port(health.group(1))}/health/ready"
    wait_until(lambda: healthy(url, proc, user), "the receiver", 60)
    return proc


def start_collector_as_written(
    user: User, line: str, name: str, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    overlay = user.overlay(name)
    words = line.split()
    assignments = {
        k: user.moved(v)
        for k, v in (w.split("=", 1) for w in words if re.match(r"^[A-Z_0-9]+=", w))
    }
    command = " ".join(w for w in words if not re.match(r"^[A-Z_0-9]+=", w))
    proc = user.start(f"{command} --config {overlay}", {**env, **assignments})
    wait_until(
        lambda: healthy(f"http://127.0.0.1:{user.ports[name + '-health']}/", proc, user),
        f"the {name} Collector",
        90,
    )
    return proc


def test_sidecar_beside_a_receiver_as_a_user(user: User) -> None:
    receiver_line, collector_line = lines("sidecar-one-host.sh")
    start_receiver_as_written(user, receiver_line)
    metrics = str(free_port())
    start_collector_as_written(user, collector_line, "sidecar", {"OTELCOL_METRICS_PORT": metrics})
    # the queue is where the page says, made by the user's Collector
    queue = user.home / "otelcol-queue"
    assert queue.is_dir() and queue.stat().st_uid == NOBODY
    send_span(user.ports["sidecar-grpc"], "through the sidecar")
    wait_until(
        lambda: stored_names(user.home / "lightning-otlp.db") == ["through the sidecar"],
        "the span in the receiver's store",
        60,
    )
    assert "otelcol_" in httpx.get(f"http://127.0.0.1:{metrics}/metrics", timeout=5).text


def test_two_collectors_on_one_host_need_their_own_metrics_ports(user: User) -> None:
    _, collector_line = lines("sidecar-one-host.sh")
    *_, gateway_line = lines("gateway-one-host.sh")
    first = str(free_port())
    start_collector_as_written(user, collector_line, "sidecar", {"OTELCOL_METRICS_PORT": first})
    # The same metrics port (8888 when neither sets it) keeps the second Collector from starting.
    overlay = user.overlay("clash")
    clash = user.start(
        f"otelcol-contrib --config collector-config/gateway-rollout.yaml --config {overlay}",
        {"OTELCOL_METRICS_PORT": first},
    )
    assert clash.wait(60) != 0
    assert "address already in use" in user.log(clash)
    second = str(free_port())
    start_collector_as_written(user, gateway_line, "gateway", {"OTELCOL_METRICS_PORT": second})
    for port in (first, second):
        assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 200


def test_three_receivers_and_a_gateway_on_one_host(user: User) -> None:
    *receivers, gateway_line = lines("gateway-one-host.sh")
    assert len(receivers) == 3
    for line in receivers:
        start_receiver_as_written(user, line)
    metrics = str(free_port())
    start_collector_as_written(user, gateway_line, "gateway", {"OTELCOL_METRICS_PORT": metrics})
    send_span(user.ports["gateway-grpc"], "through the gateway")
    stores = [user.home / f"r{i}.db" for i in range(3)]
    wait_until(
        lambda: sorted(n for s in stores for n in stored_names(s)) == ["through the gateway"],
        "the span in one receiver's store",
        90,
    )


def test_builder_is_on_path_as_the_page_says(tmp_path: Path) -> None:
    """The page's `go install` and PATH lines, then `builder` found by name."""
    install, path_line, *_ = lines("build-collector.sh")
    script = f"set -e\n{install}\n{path_line}\ncommand -v builder\nbuilder version\n"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "GOPATH": str(tmp_path / "go"),  # a user's own GOPATH: builder lands in its bin/
        "GOMODCACHE": str(CACHE / "go" / "mod"),  # modules and builds from `make collector`
        "GOCACHE": str(CACHE / "go" / "build"),
        "GOFLAGS": "-modcacherw",
    }
    done = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[0] == str(tmp_path / "go" / "bin" / "builder")
    assert "v0.136.0" in done.stderr  # `builder version` prints there


@pytest.mark.postgres
def test_a_fleet_on_one_postgresql_as_the_page_says(user: User) -> None:
    """docs/postgresql.md's three commands: a PostgreSQL server, two receivers on it, the gateway
    (gateway.yaml) in front of them.

    The first command (``docker run ... postgres:16``) cannot run here (no container engine), so
    a throwaway server of tests/postgres.py stands in for it on the documented URL's port; that
    server trusts loopback, so ``PGPASSWORD`` is passed as written but not checked. The receivers
    and the Collector run as written, ports moved to free ones.
    """
    from .postgres import PostgresServer

    server_line, *receivers, gateway_line = lines("fleet-one-host.sh")
    assert server_line.startswith("docker run ") and "127.0.0.1:5432:5432" in server_line
    assert len(receivers) == 2
    server = PostgresServer().start()
    try:
        user.ports["5432"] = str(server.port)  # the documented port is the stand-in's
        for line in receivers:
            env, _, command = line.partition(" ")
            name, value = env.split("=", 1)
            assert name == "PGPASSWORD", line
            proc = user.start(command, {name: value}, as_user=False)
            url = f"http://127.0.0.1:{user.port(_health_port(command))}/health/ready"
            wait_until(lambda: healthy(url, proc, user), "a receiver", 60)  # noqa: B023
        start_collector_as_written(
            user, gateway_line, "gateway", {"OTELCOL_METRICS_PORT": str(free_port())}
        )
        # 40 traces of one rollout: each trace to one receiver by its id, the rollout whole.
        provider = TracerProvider(resource=Resource.create({"service.name": "fleet-agent"}))
        endpoint = f"127.0.0.1:{user.ports['gateway-grpc']}"
        provider.add_span_processor(
            SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True))
        )
        tracer = provider.get_tracer("docs")
        for i in range(40):
            span = tracer.start_span(f"step {i}", context=Context())
            span.set_attribute("agentlightning.rollout_id", "ro-0123456789ab")
            span.set_attribute("agentlightning.attempt_id", "at-01234567")
            span.end()
        provider.shutdown()
        store = re.search(r"--store (\S+)", receivers[0])
        assert store
        store_url = user.moved(store.group(1))

        def names() -> list[str]:
            done = subprocess.run(
                [str(BIN / "lightning-otlp"), "spans", "--store", store_url],
                capture_output=True,
                text=True,
                timeout=60,
            )
            return [json.loads(line)["name"] for line in done.stdout.splitlines()]

        wait_until(lambda: len(names()) == 40, "40 spans in the shared store", 90)
        rollouts = {json.loads(line)["rollout_id"] for line in _rollouts(store_url)}
        assert rollouts == {"ro-0123456789ab"}
        # both receivers took a share (a trace goes to either with odds 2:1; all 40 to one:
        # about 1 in 10^7)
        for line in receivers:
            port = user.port(_health_port(line))
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            accepted = re.findall(r"^otelcol_receiver_accepted_spans\{.*\} (\S+)$", metrics, re.M)
            assert sum(float(n) for n in accepted) > 0, metrics[:2000]
    finally:
        user.stop()
        server.close()


def _rollouts(store_url: str) -> list[str]:
    done = subprocess.run(
        [str(BIN / "lightning-otlp"), "rollouts", "--store", store_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def _health_port(line: str) -> str:
    health = re.search(r"--health 127\.0\.0\.1:(\d+)", line)
    assert health, line
    return health.group(1)
