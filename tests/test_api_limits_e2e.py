"""The ``/v1/agl`` API under attack against a real receiver, with the OTLP path's limits: slow and
unread bodies without a token, sizes, memory, JSON bombs, abandoned waits. Each test checks the
status code, that nothing acknowledged is lost, and what an honest client gets meanwhile."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from lightning_otlp.api import bodies
from lightning_otlp.errors import PayloadTooLarge

from .payloads import make_request, make_span
from .support import ReceiverProcess

pytestmark = pytest.mark.api

TOKEN = "s3cret"
AUTH = {"authorization": f"Bearer {TOKEN}"}
PB = {"content-type": "application/x-protobuf", **AUTH}


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReceiverProcess]:
    root = tmp_path_factory.mktemp("api-limits")
    tokens = root / "tokens"
    tokens.write_text(TOKEN + "\n")
    proc = ReceiverProcess(
        root / "r.db",
        "--auth-token-file",
        str(tokens),
        "--max-request-bytes",
        str(1 << 20),
        "--max-request-memory",
        str(4 << 20),
        "--body-timeout",
        "2",
        "--max-json-values",
        "10000",
        "--max-wait",
        "3600",
    ).start()
    yield proc
    assert proc.stop() == 0, proc.log()
    assert "Traceback" not in proc.log()


def _address(receiver: ReceiverProcess) -> tuple[str, int]:
    host, port = receiver.http_url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _raw(receiver: ReceiverProcess, head: str, body: bytes = b"") -> socket.socket:
    sock = socket.create_connection(_address(receiver), timeout=30)
    sock.sendall(head.encode() + b"\r\n" + body)
    return sock


def _read_to_end(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection (a timeout fails the test)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    return data


def _otlp(receiver: ReceiverProcess, n: int) -> httpx.Response:
    request = make_request([make_span(trace_id=n.to_bytes(16, "big"), span_id=b"\x01" * 8)])
    return httpx.post(receiver.traces_url, content=request.SerializeToString(), headers=PB)


def _head(path: str, length: int, *, token: bool) -> str:
    auth = f"authorization: Bearer {TOKEN}\r\n" if token else ""
    return (
        f"POST /v1/agl{path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"{auth}content-length: {length}\r\n"
    )


@pytest.mark.e2e
def test_unread_bodies_without_a_token_are_refused_and_closed(receiver: ReceiverProcess) -> None:
    """A 401 does not wait for a body that trickles in: the connection closes after it, and
    the honest client's exports keep being stored meanwhile."""
    slow = [_raw(receiver, _head("/rollouts", 10_000, token=False), b"{") for _ in range(50)]
    assert [_otlp(receiver, 100 + i).status_code for i in range(5)] == [200] * 5
    answers = [_read_to_end(sock) for sock in slow]
    assert all(a.startswith(b"HTTP/1.1 401") for a in answers), answers[0]
    assert all(b"connection: close" in a.lower() for a in answers)
    assert len({s["trace_id"] for s in receiver.wait_for_spans(5)}) >= 5


@pytest.mark.e2e
def test_api_bodies_get_the_otlp_size_time_and_memory_limits(receiver: ReceiverProcess) -> None:
    too_big = _read_to_end(_raw(receiver, _head("/resources", 2 << 20, token=True)))
    assert too_big.startswith(b"HTTP/1.1 413"), too_big
    beyond_budget = _read_to_end(_raw(receiver, _head("/resources", 1 << 20, token=True)))
    # within the size limit; 4 MiB budget: it fits, but the body never comes: 408 and closed
    assert beyond_budget.startswith(b"HTTP/1.1 408"), beyond_budget
    base = receiver.http_url + "/v1/agl"
    assert httpx.post(base + "/resources", json={"m": {"x": 1}}, headers=AUTH).status_code == 201
    assert _otlp(receiver, 200).status_code == 200


@pytest.mark.e2e
def test_json_bombs_are_refused_before_parsing(receiver: ReceiverProcess) -> None:
    base = receiver.http_url + "/v1/agl"
    headers = {"content-type": "application/json", **AUTH}
    bomb = b'{"input": [' + b",".join([b"[]"] * 100_000) + b"]}"
    refused = httpx.post(base + "/rollouts", content=bomb, headers=headers)
    assert refused.status_code == 413, refused.text
    assert "at most 10000" in refused.json()["detail"]
    deep = httpx.post(base + "/rollouts", content=b"[" * 9_000, headers=headers)
    assert deep.status_code == 422
    assert _otlp(receiver, 300).status_code == 200
    assert httpx.get(receiver.health_url + "/health").status_code == 200
    ok = httpx.post(base + "/rollouts", json={"input": [[]] * 100}, headers=AUTH)
    assert ok.status_code == 201
    # Counted as it arrives: refused (and closed) before the rest of the body is sent.
    sock = _raw(receiver, _head("/rollouts", 1 << 20, token=True), b'{"input": [' + b"[]," * 6000)
    answer = _read_to_end(sock)
    assert answer.startswith(b"HTTP/1.1 413") and b"at most 10000" in answer, answer[:300]


def test_json_values_are_counted_across_slices_and_only_until_past_the_limit() -> None:
    """The count before parsing sees every slice of a body, and stops once past the limit."""
    n = bodies.COUNT_SLICE  # "[]," per array: three slices' worth and more
    body = b"[" + b"[]," * n + b"[]]"
    values = 2 * n + 2  # each "[" and ","
    assert bodies.count_values(body, 10**9) == values
    assert bodies.parse_json(body, values) == [[]] * (n + 1)
    with pytest.raises(PayloadTooLarge):
        bodies.parse_json(body, values - 1)
    stopped = bodies.count_values(body, 1000)
    assert 1000 < stopped < values // 2  # after the first slice, not the whole body


def _gauge(receiver: ReceiverProcess, name: str) -> float:
    for line in httpx.get(receiver.health_url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


@pytest.mark.e2e
def test_an_abandoned_wait_ends_with_its_client(receiver: ReceiverProcess) -> None:
    base = receiver.http_url + "/v1/agl"
    [rollout] = httpx.post(
        base + "/queues/rollouts/enqueue", json={"rollouts": [{"input": 1}]}, headers=AUTH
    ).json()
    body = b'{"rollout_ids": ["' + rollout["rollout_id"].encode() + b'"], "timeout": 1e400}'
    waits = [
        _raw(receiver, _head("/waits/rollouts", len(body), token=True), body) for _ in range(20)
    ]
    deadline = time.monotonic() + 30
    while _gauge(receiver, "lightning_otlp_api_waits") < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gauge(receiver, "lightning_otlp_api_waits") == 20
    for sock in waits:
        sock.close()
    while _gauge(receiver, "lightning_otlp_api_waits") > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gauge(receiver, "lightning_otlp_api_waits") == 0
    assert _otlp(receiver, 400).status_code == 200


@pytest.mark.e2e
def test_a_whole_rollout_is_read_in_parts_and_a_reader_may_leave_halfway(
    receiver: ReceiverProcess,
) -> None:
    """A read of a whole large rollout is sent a slice at a time with its length announced: it
    arrives whole, a reader that leaves after the head costs nothing more, and exports go on."""
    ids = {"agentlightning.rollout_id": "ro-00000000beef", "agentlightning.attempt_id": "at-beef"}
    for part in range(3):  # 1,500 spans: three slices of the page and more
        spans = [make_span(f"step {part * 500 + i}", attributes=ids) for i in range(500)]
        request = make_request(spans).SerializeToString()
        assert httpx.post(receiver.traces_url, content=request, headers=PB).status_code == 200
    path = "/v1/agl/spans?rollout_id=ro-00000000beef"
    read = httpx.get(receiver.http_url + path, headers=AUTH, timeout=30)
    assert read.status_code == 200
    assert int(read.headers["content-length"]) == len(read.content)
    page = read.json()
    assert page["total"] == 1500 and len(page["items"]) == 1500
    assert {s["name"] for s in page["items"]} == {f"step {i}" for i in range(1500)}
    for _ in range(5):  # each leaves once the head has come
        sock = _raw(
            receiver, f"GET {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\n"
        )
        assert sock.recv(12) == b"HTTP/1.1 200"
        sock.close()
    assert _otlp(receiver, 500).status_code == 200
    assert httpx.get(receiver.http_url + path, headers=AUTH, timeout=30).json()["total"] == 1500
