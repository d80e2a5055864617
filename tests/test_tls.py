"""TLS and mutual TLS on both transports, with the stock Python and Node.js exporters' own
certificate options, against a throwaway CA."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GRPCSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HTTPSpanExporter,
)
from opentelemetry.sdk.trace.export import SpanExportResult

from .ops import EXPORT, TOKENS, Start, grpc_export, node, request_bytes, sdk_spans, span_names


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
