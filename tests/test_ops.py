"""Operations: health and readiness, /metrics, bearer auth, TLS and mTLS, SIGTERM under load.

End-to-end tests run the real ``lightning-otlp serve`` and the stock Python and Node.js
OpenTelemetry exporters, with their own header and certificate options.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GRPCSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HTTPSpanExporter,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lightning_otlp.errors import Unauthenticated
from lightning_otlp.receiver.auth import BearerAuth, load_tokens
from lightning_otlp.receiver.metrics import Histogram
from lightning_otlp.server import _warn_if_open
from lightning_otlp.settings import Settings

from .payloads import make_request, make_span
from .support import ReceiverProcess, node_script

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
PROTOBUF = {"content-type": "application/x-protobuf"}
TOKENS = ("tok-first-3f9c1a7e", "tok-second-77b2d0c4")
Start = Callable[..., ReceiverProcess]


# -- helpers -------------------------------------------------------------------------------


def request_bytes(count: int = 3, name: str = "op") -> tuple[bytes, set[str]]:
    spans = [make_span(name) for _ in range(count)]
    return make_request(spans).SerializeToString(), {s.span_id.hex() for s in spans}


def grpc_export(target: str, body: bytes, metadata: list[tuple[str, str]] | None = None) -> None:
    with grpc.insecure_channel(target) as channel:
        channel.unary_unary(EXPORT)(body, metadata=metadata, timeout=10)


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


def sdk_spans(name: str) -> list[ReadableSpan]:
    """Finished spans made by the real SDK, to hand to a real exporter."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.get_tracer("ops").start_span(name).end()
    provider.shutdown()
    return list(memory.get_finished_spans())


def node(kind: str, endpoint: str, name: str, env: dict[str, str]) -> dict[str, Any]:
    result = subprocess.run(
        ["node", str(node_script("ops_client.js")), kind, endpoint, name],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "OTEL_EXPORTER_OTLP_TIMEOUT": "3000", **env},
    )
    assert result.returncode == 0, result.stderr
    reply: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return reply


def span_names(proc: ReceiverProcess) -> set[str]:
    return {s["name"] for s in proc.spans()}


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


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text("\n".join(TOKENS) + "\n")
    return path


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


# -- TLS ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _issue(
    subject: str,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer if issuer else (name, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256()), key


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    folder = tmp_path_factory.mktemp("certs")
    ca_cert, ca_key = _issue("lightning-otlp test CA", None, ca=True)
    issuer = (ca_cert.subject, ca_key)
    files: dict[str, bytes] = {"ca.pem": ca_cert.public_bytes(serialization.Encoding.PEM)}
    for who, server in (("server", True), ("client", False)):
        cert, key = _issue(f"lightning-otlp test {who}", issuer, server=server)
        files[f"{who}.pem"] = cert.public_bytes(serialization.Encoding.PEM)
        files[f"{who}-key.pem"] = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return Certs(
        folder / "ca.pem",
        folder / "server.pem",
        folder / "server-key.pem",
        folder / "client.pem",
        folder / "client-key.pem",
    )


@pytest.fixture
def no_ca_bundle_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests lets these variables override a session's own CA file (the HTTP exporter's)."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


def tls_flags(certs: Certs, mutual: bool = False) -> list[str]:
    flags = ["--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)]
    return flags + (["--tls-client-ca", str(certs.ca)] if mutual else [])


def grpc_tls(certs: Certs, client: bool) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=certs.ca.read_bytes(),
        private_key=certs.client_key.read_bytes() if client else None,
        certificate_chain=certs.client_cert.read_bytes() if client else None,
    )


@pytest.mark.e2e
@pytest.mark.usefixtures("no_ca_bundle_env")
def test_tls_with_the_python_exporters(start_receiver: Start, certs: Certs) -> None:
    proc = start_receiver(*tls_flags(certs))
    assert proc.http_url.startswith("https://127.0.0.1:")
    http = HTTPSpanExporter(endpoint=proc.traces_url, certificate_file=str(certs.ca), timeout=5)
    assert http.export(sdk_spans("py-http-tls")) == SpanExportResult.SUCCESS
    http.shutdown()
    grpc_exporter = GRPCSpanExporter(
        endpoint=proc.grpc_target, credentials=grpc_tls(certs, client=False), timeout=5
    )
    assert grpc_exporter.export(sdk_spans("py-grpc-tls")) == SpanExportResult.SUCCESS
    grpc_exporter.shutdown()
    # plaintext is refused on both ports
    with pytest.raises(httpx.HTTPError):
        httpx.post(proc.traces_url.replace("https", "http"), content=b"", timeout=5)
    with pytest.raises(grpc.RpcError) as raised:
        grpc_export(proc.grpc_target, request_bytes(1)[0])
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert span_names(proc) == {"py-http-tls", "py-grpc-tls"}


@pytest.mark.e2e
@pytest.mark.usefixtures("no_ca_bundle_env")
def test_mutual_tls_and_auth_with_the_python_exporters(
    start_receiver: Start, certs: Certs, token_file: Path
) -> None:
    proc = start_receiver(*tls_flags(certs, mutual=True), "--auth-token-file", str(token_file))
    headers = {"authorization": f"Bearer {TOKENS[0]}"}
    no_client_cert = HTTPSpanExporter(
        endpoint=proc.traces_url, certificate_file=str(certs.ca), headers=headers, timeout=2
    )
    assert no_client_cert.export(sdk_spans("refused")) == SpanExportResult.FAILURE
    no_client_cert.shutdown()
    http = HTTPSpanExporter(
        endpoint=proc.traces_url,
        certificate_file=str(certs.ca),
        client_certificate_file=str(certs.client_cert),
        client_key_file=str(certs.client_key),
        headers=headers,
        timeout=5,
    )
    assert http.export(sdk_spans("py-http-mtls")) == SpanExportResult.SUCCESS
    http.shutdown()
    with grpc.secure_channel(proc.grpc_target, grpc_tls(certs, client=False)) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            channel.unary_unary(EXPORT)(
                request_bytes(1)[0], metadata=list(headers.items()), timeout=5
            )
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    grpc_exporter = GRPCSpanExporter(
        endpoint=proc.grpc_target,
        credentials=grpc_tls(certs, client=True),
        headers=headers,
        timeout=5,
    )
    assert grpc_exporter.export(sdk_spans("py-grpc-mtls")) == SpanExportResult.SUCCESS
    grpc_exporter.shutdown()
    assert span_names(proc) == {"py-http-mtls", "py-grpc-mtls"}


@pytest.mark.e2e
@pytest.mark.node
def test_mutual_tls_with_the_nodejs_exporters(start_receiver: Start, certs: Certs) -> None:
    proc = start_receiver(*tls_flags(certs, mutual=True))
    endpoints = {
        "grpc": f"https://{proc.grpc_target}",
        "http": proc.http_url,
        "proto": proc.http_url,
    }
    trust = {"OTEL_EXPORTER_OTLP_CERTIFICATE": str(certs.ca)}
    client = {
        **trust,
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": str(certs.client_cert),
        "OTEL_EXPORTER_OTLP_CLIENT_KEY": str(certs.client_key),
    }
    for kind, endpoint in endpoints.items():
        refused = node(kind, endpoint, f"node-{kind}-refused", trust)
        assert not refused["ok"], refused
        accepted = node(kind, endpoint, f"node-{kind}-mtls", client)
        assert accepted["ok"], accepted
    assert span_names(proc) == {f"node-{k}-mtls" for k in endpoints}


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
