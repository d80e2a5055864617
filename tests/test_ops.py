"""Operations: health and readiness, /metrics, bearer auth, SIGTERM under load, ports in use.

End-to-end tests run the real ``lightning-otlp serve`` and the stock Python and Node.js
OpenTelemetry exporters, with their own header options (TLS: ``test_tls.py``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GRPCSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HTTPSpanExporter,
)
from opentelemetry.sdk.trace.export import SpanExportResult

from lightning_otlp import server
from lightning_otlp.errors import Unauthenticated
from lightning_otlp.receiver.auth import BearerAuth, load_tokens
from lightning_otlp.receiver.metrics import Histogram
from lightning_otlp.server import _warn_if_open
from lightning_otlp.settings import Settings

from .ops import (
    EXPORT,
    PROTOBUF,
    TOKENS,
    Start,
    grpc_export,
    node,
    request_bytes,
    sdk_spans,
    span_names,
)
from .support import ReceiverProcess

# -- helpers -------------------------------------------------------------------------------


def metrics(proc: ReceiverProcess) -> dict[str, float]:
    """``/metrics`` parsed; also checks every sample belongs to a declared metric family."""
    text = httpx.get(proc.health_url + "/metrics", timeout=10).text
    types = dict(re.findall(r"^# TYPE (\S+) (counter|gauge|histogram)$", text, re.M))
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)", line)
        assert match, f"not a Prometheus sample line: {line!r}"
        name = match.group(1)
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert family in types, f"{name} has no # TYPE line"
        samples[name + (match.group(2) or "")] = float(match.group(3))
    return samples


# -- unit: auth, histogram, warning ---------------------------------------------------------


def test_bearer_auth_accepts_any_listed_token_only(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# team a\n{TOKENS[0]}\n\n  {TOKENS[1]}  \n")
    auth = BearerAuth(load_tokens(path))
    assert auth.allows(f"Bearer {TOKENS[0]}")
    assert auth.allows(f"bearer {TOKENS[1]}".encode())
    for bad in (None, "", TOKENS[0], f"Basic {TOKENS[0]}", f"Bearer {TOKENS[0][:-1]}",
                f"Bearer {TOKENS[0]}x", "Bearer ", f"Bearer {TOKENS[0]} {TOKENS[1]}"):  # fmt: skip
        assert not auth.allows(bad), bad
    with pytest.raises(Unauthenticated) as raised:
        auth.require(f"Bearer {TOKENS[0]}-wrong")
    assert TOKENS[0] not in str(raised.value)
    path.write_text("# only comments\n")
    with pytest.raises(ValueError, match="no token"):
        load_tokens(path)


def test_histogram_buckets_cumulate_on_the_upper_bound() -> None:
    hist = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        hist.observe(value)
    assert hist.counts == [2, 1, 1]
    assert hist.count == 4
    assert hist.total == pytest.approx(3.65)


def test_warns_when_all_interfaces_listen_without_auth(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lightning_otlp"):
        _warn_if_open(Settings(grpc="0.0.0.0:4317", http="[::]:4318"), None)
    assert [r.getMessage().split(" ")[0] for r in caplog.records] == ["OTLP/gRPC", "OTLP/HTTP"]
    assert "--auth-token-file" in caplog.records[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lightning_otlp"):
        _warn_if_open(Settings(grpc="0.0.0.0:4317"), BearerAuth((b"t",)))
        _warn_if_open(Settings(grpc="127.0.0.1:4317", http="localhost:4318"), None)
    assert caplog.records == []


@pytest.mark.parametrize("installed", [True, False], ids=["uvloop", "no uvloop"])
def test_serves_on_uvloop_where_it_is_installed_else_on_asyncio(
    monkeypatch: pytest.MonkeyPatch, installed: bool
) -> None:
    uvloop = pytest.importorskip("uvloop") if installed else None
    if not installed:
        monkeypatch.setitem(sys.modules, "uvloop", None)  # as on Windows: the import fails
    loops: list[asyncio.AbstractEventLoop] = []

    async def serve(settings: Settings) -> None:
        loops.append(asyncio.get_running_loop())

    monkeypatch.setattr(server, "serve", serve)
    server.run(Settings())
    # uvloop's loop is no asyncio.BaseEventLoop: only the standard library's loops are.
    assert isinstance(loops[0], asyncio.BaseEventLoop) is not installed
    if uvloop is not None:
        assert isinstance(loops[0], uvloop.Loop)
    assert (server._uvloop() is None) is not installed


# -- health and metrics ---------------------------------------------------------------------


@pytest.mark.e2e
def test_health_and_metrics_count_both_transports(start_receiver: Start) -> None:
    proc = start_receiver()
    assert proc.health_url.startswith("http://127.0.0.1:")
    ready = httpx.get(proc.health_url + "/health", timeout=10)
    assert (ready.status_code, ready.json()["status"]) == (200, "ready")
    assert httpx.get(proc.health_url + "/health/live", timeout=10).status_code == 200
    assert httpx.get(proc.health_url + "/health/ready", timeout=10).status_code == 200
    assert httpx.post(proc.health_url + "/health", timeout=10).status_code == 405

    with httpx.Client(timeout=10) as client:
        for _ in range(3):
            body, _ = request_bytes(4)
            assert client.post(proc.traces_url, content=body, headers=PROTOBUF).status_code == 200
        bad = client.post(proc.traces_url, content=b"\x0a\xff", headers=PROTOBUF)
        assert bad.status_code == 400
    for _ in range(2):
        grpc_export(proc.grpc_target, request_bytes(5)[0])

    m = metrics(proc)
    labels = '{receiver="otlp",transport="%s"}'
    assert m["otelcol_receiver_accepted_spans" + labels % "http"] == 12
    assert m["otelcol_receiver_accepted_spans" + labels % "grpc"] == 10
    assert m["otelcol_receiver_refused_spans" + labels % "http"] == 0
    assert m["lightning_otlp_failed_requests" + labels % "http"] == 1
    assert m["lightning_otlp_request_duration_seconds_count" + labels % "http"] == 4
    assert m["lightning_otlp_request_duration_seconds_count" + labels % "grpc"] == 2
    inf = (
        'lightning_otlp_request_duration_seconds_bucket{receiver="otlp",transport="http",le="+Inf"}'
    )
    assert m[inf] == 4
    assert m["lightning_otlp_store_commit_duration_seconds_count"] == 5
    assert m["lightning_otlp_store_commit_duration_seconds_sum"] > 0
    assert m["lightning_otlp_ready"] == 1
    assert m["lightning_otlp_requests_in_flight"] == 0


@pytest.mark.e2e
def test_readiness_is_false_while_the_store_cannot_commit(start_receiver: Start) -> None:
    proc = start_receiver()
    grpc_export(proc.grpc_target, request_bytes(1)[0])  # creates the schema
    blocker = sqlite3.connect(proc.db_path, timeout=10, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        body, _ = request_bytes(2)
        refused = httpx.post(proc.traces_url, content=body, headers=PROTOBUF, timeout=30)
        assert refused.status_code == 503
        health = httpx.get(proc.health_url + "/health", timeout=10)
        assert (health.status_code, health.json()["status"]) == (503, "not ready")
        assert httpx.get(proc.health_url + "/health/live", timeout=10).status_code == 200
        assert metrics(proc)["lightning_otlp_ready"] == 0
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    accepted = httpx.post(proc.traces_url, content=body, headers=PROTOBUF, timeout=30)
    assert accepted.status_code == 200
    assert httpx.get(proc.health_url + "/health", timeout=10).status_code == 200


# -- auth ------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_auth_on_both_transports_with_raw_requests(start_receiver: Start, token_file: Path) -> None:
    proc = start_receiver("--auth-token-file", str(token_file), "--log-level", "debug")
    body, ids = request_bytes(2)
    with httpx.Client(timeout=10) as client:
        missing = client.post(proc.traces_url, content=body, headers=PROTOBUF)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert status_pb2.Status.FromString(missing.content).code == 16  # UNAUTHENTICATED
        wrong = client.post(
            proc.traces_url,
            json={"resourceSpans": []},
            headers={"authorization": f"Bearer {TOKENS[0]}-nope"},
        )
        assert wrong.status_code == 401
        assert wrong.json()["code"] == 16
        ok = client.post(
            proc.traces_url,
            content=body,
            headers={**PROTOBUF, "authorization": f"Bearer {TOKENS[1]}"},
        )
        assert ok.status_code == 200
        # health needs no token, on both ports
        assert client.get(proc.health_url + "/health").status_code == 200
        assert client.get(proc.health_url + "/metrics").status_code == 200
        assert client.get(proc.http_url + "/health").status_code == 200

    grpc_body, grpc_ids = request_bytes(2)
    for metadata in (None, [("authorization", f"Bearer {TOKENS[1]}x")], [("authorization", "x")]):
        with pytest.raises(grpc.RpcError) as raised:
            grpc_export(proc.grpc_target, grpc_body, metadata)
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    grpc_export(proc.grpc_target, grpc_body, [("authorization", f"Bearer {TOKENS[0]}")])

    assert {s["span_id"] for s in proc.spans()} == ids | grpc_ids
    assert proc.stop() == 0
    log = proc.log()
    assert "UNAUTHENTICATED" in log or "401" in log
    for token in TOKENS:
        assert token not in log


@pytest.mark.e2e
def test_auth_with_the_python_exporters_header_option(
    start_receiver: Start, token_file: Path
) -> None:
    proc = start_receiver("--auth-token-file", str(token_file))
    good = {"authorization": f"Bearer {TOKENS[0]}"}
    bad = {"authorization": "Bearer guess"}
    exporters = {
        "py-http": lambda h: HTTPSpanExporter(endpoint=proc.traces_url, headers=h, timeout=5),
        "py-grpc": lambda h: GRPCSpanExporter(
            endpoint=proc.grpc_target, insecure=True, headers=h, timeout=5
        ),
    }
    for name, make in exporters.items():
        refused = make(bad)
        assert refused.export(sdk_spans(f"{name}-refused")) == SpanExportResult.FAILURE
        refused.shutdown()
        accepted = make(good)
        assert accepted.export(sdk_spans(f"{name}-accepted")) == SpanExportResult.SUCCESS
        accepted.shutdown()
    assert span_names(proc) == {"py-http-accepted", "py-grpc-accepted"}


@pytest.mark.e2e
@pytest.mark.node
def test_auth_with_the_nodejs_exporters(start_receiver: Start, token_file: Path) -> None:
    proc = start_receiver("--auth-token-file", str(token_file))
    endpoints = {
        "grpc": f"http://{proc.grpc_target}",
        "http": proc.http_url,
        "proto": proc.http_url,
    }
    for kind, endpoint in endpoints.items():
        refused = node(kind, endpoint, f"node-{kind}-refused", {"OPS_TOKEN": "guess"})
        assert not refused["ok"], refused
        accepted = node(kind, endpoint, f"node-{kind}-accepted", {"OPS_TOKEN": TOKENS[1]})
        assert accepted["ok"], accepted
    assert span_names(proc) == {f"node-{k}-accepted" for k in endpoints}


# -- graceful shutdown -------------------------------------------------------------------------


class Load:
    """Concurrent raw OTLP requests on both transports until told to stop or the server is gone."""

    def __init__(self, proc: ReceiverProcess, http_workers: int = 3, grpc_workers: int = 2) -> None:
        self.proc = proc
        self.acked: set[str] = set()
        self.acked_after_signal = 0
        self.signalled = threading.Event()
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._http, daemon=True) for _ in range(http_workers)
        ] + [threading.Thread(target=self._grpc, daemon=True) for _ in range(grpc_workers)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def _ack(self, ids: set[str]) -> None:
        with self._lock:
            self.acked |= ids
            if self.signalled.is_set():
                self.acked_after_signal += 1

    def _requests(self) -> Iterator[tuple[bytes, set[str]]]:
        for _ in range(5000):  # bounded even if the server never stops
            if self.stop.is_set() or self.proc.proc is None or self.proc.proc.poll() is not None:
                return
            yield request_bytes(20, "load")

    def _http(self) -> None:
        with httpx.Client(timeout=30) as client:
            for body, ids in self._requests():
                try:
                    answer = client.post(self.proc.traces_url, content=body, headers=PROTOBUF)
                except httpx.HTTPError:
                    if self.signalled.is_set():
                        return
                    continue
                if answer.status_code == 200:
                    self._ack(ids)

    def _grpc(self) -> None:
        with grpc.insecure_channel(self.proc.grpc_target) as channel:
            export = channel.unary_unary(EXPORT)
            for body, ids in self._requests():
                try:
                    export(body, timeout=30)
                except grpc.RpcError:
                    if self.signalled.is_set():
                        return
                    continue
                self._ack(ids)


@pytest.mark.e2e
def test_sigterm_under_load_commits_every_acknowledged_request(start_receiver: Start) -> None:
    proc = start_receiver("--shutdown-timeout", "10")
    assert proc.proc is not None
    with Load(proc) as load:
        deadline = time.monotonic() + 60
        while len(load.acked) < 20 * 30 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(load.acked) >= 20 * 30, "load never got going"
        # Hold the database so requests pile up inside the receiver, then signal: those
        # requests are in flight for certain when SIGTERM arrives.
        blocker = sqlite3.connect(proc.db_path, timeout=10, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            while metrics(proc)["lightning_otlp_requests_in_flight"] < 2:
                time.sleep(0.01)
            load.signalled.set()
            proc.proc.send_signal(signal.SIGTERM)
            while True:  # the health port stays up while draining, and says so
                health = httpx.get(proc.health_url + "/health", timeout=10)
                if health.status_code == 503:
                    assert health.json()["status"] == "shutting down"
                    break
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        code = proc.proc.wait(30)
    log = proc.log()
    assert code == 0, log
    assert "stopped" in log
    assert load.acked_after_signal >= 2  # the requests held in flight were finished, not dropped
    stored = {s["span_id"] for s in proc.spans()}
    missing = load.acked - stored
    assert not missing, f"{len(missing)} acknowledged spans were not stored"


@pytest.mark.e2e
def test_shutdown_timeout_bounds_shutdown_whatever_slow_clients_do(start_receiver: Start) -> None:
    """Stalled uploads, trickled headers and idle keep-alive connections hold nothing past
    ``--shutdown-timeout``: SIGTERM ends the process long before their own timeouts would."""
    proc = start_receiver(
        "--shutdown-timeout", "2", "--body-timeout", "300", "--header-timeout", "300"
    )
    assert proc.proc is not None
    host, port = proc.http_url.removeprefix("http://").rsplit(":", 1)
    held = []
    for head in (
        b"POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-protobuf\r\n"
        b"content-length: 1000000\r\n\r\n" + b"\x0a" * 10,  # a body that stalls
        b"POST /v1/traces HTTP/1.1\r\nhost: x\r\nx-slow: ",  # headers that never end
    ):
        conn = socket.create_connection((host, int(port)))
        conn.sendall(head)
        held.append(conn)
    idle = httpx.Client()  # a keep-alive connection left open after an answer
    assert idle.get(proc.http_url + "/health").status_code in (200, 404)
    time.sleep(0.5)
    try:
        signalled = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        code = proc.proc.wait(120)  # the clients' own timeouts are 300 s
        took = time.monotonic() - signalled
    finally:
        idle.close()
        for conn in held:
            conn.close()
    assert code == 0, proc.log()
    assert took < 300, took


@pytest.mark.e2e
def test_metrics_show_the_outbox_while_the_server_is_unreachable(
    start_receiver: Start, tmp_path: Path
) -> None:
    """Forwarding to a LightningStore server that is down: spans wait in the outbox."""
    with socket.socket() as probe:  # a loopback port with nothing listening
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    outbox = tmp_path / "outbox.db"
    proc = start_receiver("--store", f"agl+http://127.0.0.1:{closed_port}?outbox={outbox}")
    assert "lightning_otlp_outbox_spans" in metrics(proc)
    grpc_export(proc.grpc_target, request_bytes(7)[0])
    m = metrics(proc)
    assert m["lightning_otlp_outbox_spans"] == 7
    assert m["lightning_otlp_outbox_bytes"] > 0
    assert m['otelcol_receiver_accepted_spans{receiver="otlp",transport="grpc"}'] == 7


@pytest.mark.e2e
def test_a_port_in_use_is_one_clean_error(start_receiver: Start, tmp_path: Path) -> None:
    first = start_receiver()
    health = first.health_url.removeprefix("http://")
    result = subprocess.run(
        [sys.executable, "-m", "lightning_otlp", "serve", "--store", f"sqlite:///{tmp_path}/b.db",
         "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0", "--health", health],
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"lightning-otlp: error: cannot bind health to {health}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("setting", ["grpc", "http", "health"])
def test_each_port_in_use_is_one_line_naming_its_setting(
    start_receiver: Start, tmp_path: Path, setting: str
) -> None:
    first = start_receiver()
    taken = {
        "grpc": first.grpc_target,
        "http": first.http_url.removeprefix("http://"),
        "health": first.health_url.removeprefix("http://"),
    }[setting]
    flags = {"grpc": "127.0.0.1:0", "http": "127.0.0.1:0", "health": "127.0.0.1:0", setting: taken}
    result = subprocess.run(
        [sys.executable, "-m", "lightning_otlp", "serve", "--store", f"sqlite:///{tmp_path}/c.db",
         *(f"--{name}={value}" for name, value in flags.items())],
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert taken in lines[0] and f"--{setting}" in lines[0]
    assert f"LIGHTNING_OTLP_{setting.upper()}" in lines[0]
