"""What a hostile client or a flaky network does to a real receiver: each fault gets
the status the OTLP spec asks for, honest clients keep being served, and nothing acknowledged
is lost. Statuses and counts only: no assertion on how long anything took."""

from __future__ import annotations

import gzip
import socket
import sqlite3
from collections.abc import Callable, Iterator

import grpc
import httpx
import pytest

from .payloads import genai_request, make_request, make_span
from .support import ReceiverProcess

pytestmark = pytest.mark.e2e

PB = {"content-type": "application/x-protobuf"}
TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
Start = Callable[..., ReceiverProcess]
IDS = {"agentlightning.rollout_id": "ro-0123456789ab", "agentlightning.attempt_id": "at-01234567"}


def stored(receiver: ReceiverProcess) -> int:
    with sqlite3.connect(receiver.db_path) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM spans").fetchone()[0])


def connect(receiver: ReceiverProcess) -> socket.socket:
    host, port = receiver.http_url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.settimeout(60)  # a safety net only: the receiver must act long before
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the receiver closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def headers_only(receiver: ReceiverProcess, length: int) -> bytes:
    host = receiver.http_url.removeprefix("http://")
    return (
        f"POST /v1/traces HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/x-protobuf\r\n"
        f"content-length: {length}\r\n\r\n"
    ).encode()


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReceiverProcess]:
    proc = ReceiverProcess(
        tmp_path_factory.mktemp("hostile") / "r.db",
        "--header-timeout",
        "1",
        "--body-timeout",
        "1",
        "--max-request-memory",
        str(1 << 20),
    ).start()
    yield proc
    assert proc.stop() == 0, proc.log()
    assert "Traceback" not in proc.log()


def test_poison_sequence_ids_never_poison_the_attempt(receiver: ReceiverProcess) -> None:
    before = stored(receiver)
    with grpc.insecure_channel(receiver.grpc_target) as channel:
        export = channel.unary_unary(TRACES)
        for value in (2**63 - 2, 2**63 - 1, float("inf"), 1e300, "99999999999999999999", -1):
            poison = make_span(attributes={**IDS, "agentlightning.span_sequence_id": value})
            honest = make_span(attributes={"agentlightning.rollout_id": "ro-00000000beef"})
            body = make_request([poison, honest]).SerializeToString()
            assert httpx.post(receiver.traces_url, content=body, headers=PB).status_code == 200
            export(make_request([make_span(attributes=IDS)]).SerializeToString(), timeout=30)
    assert stored(receiver) == before + 6 * 3


def test_many_gzip_members_are_a_400_and_honest_clients_go_on(receiver: ReceiverProcess) -> None:
    bomb = gzip.compress(b"") * 50_000  # 1 MiB of empty members: 1.6 s of CPU before
    response = httpx.post(
        receiver.traces_url, content=bomb, headers={**PB, "content-encoding": "gzip"}
    )
    assert response.status_code == 400
    before = stored(receiver)
    honest = genai_request(10).SerializeToString()
    assert httpx.post(receiver.traces_url, content=honest, headers=PB).status_code == 200
    assert stored(receiver) == before + 10


def test_idle_and_trickling_connections_are_closed(receiver: ReceiverProcess) -> None:
    idle = connect(receiver)
    assert read_all(idle) == b""  # closed, having sent nothing
    trickle = connect(receiver)
    closed = False
    try:
        for byte in b"POST /v1/traces HTTP/1.1\r\nhost: x\r\n" * 100:
            trickle.send(bytes([byte]))
            trickle.settimeout(0.2)
            try:
                if trickle.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
    except OSError:
        closed = True
    assert closed


def test_a_trickled_body_is_answered_408(receiver: ReceiverProcess) -> None:
    sock = connect(receiver)
    sock.sendall(headers_only(receiver, 1000) + b"\x0a")
    answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_uploads_beyond_the_memory_budget_are_503_before_their_body(
    receiver: ReceiverProcess,
) -> None:
    before = stored(receiver)
    stalled = connect(receiver)  # holds 900 KB of the 1 MiB budget and stops short
    stalled.sendall(headers_only(receiver, 900_000) + b"\x0a" * 1000)
    second = connect(receiver)
    second.sendall(headers_only(receiver, 500_000))  # no body at all: refused on its headers
    answer = second.recv(65536)
    assert answer.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in answer.lower()
    with grpc.insecure_channel(receiver.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            channel.unary_unary(TRACES)(genai_request(2000).SerializeToString(), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        stalled.close()  # its reservation ends with it (or with the body timeout)
        small = genai_request(20).SerializeToString()
        channel.unary_unary(TRACES)(small, timeout=30)
    assert httpx.post(receiver.traces_url, content=small, headers=PB).status_code == 200
    assert stored(receiver) == before + 20  # the same 20 spans twice: stored once


def test_connections_beyond_the_limit_are_refused_with_503(start_receiver: Start) -> None:
    receiver = start_receiver("--max-connections", "4", "--header-timeout", "60")
    held = [connect(receiver) for _ in range(4)]
    extra = connect(receiver)
    answer = read_all(extra)
    assert answer.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in answer.lower()
    for sock in held:
        sock.close()
    body = genai_request(5).SerializeToString()
    for _ in range(20):  # the receiver notices the closed connections as it gets to them
        response = httpx.post(receiver.traces_url, content=body, headers=PB)
        if response.status_code == 200:
            break
    assert response.status_code == 200
