"""The soak's hostile clients (``bench/soak.py``), run in a process of their own so they do not
take the honest clients' interpreter lock: slow connections, stalled uploads, many-member gzip
bodies, floods of empty spans and poison values, and attacks on the API (slow bodies without a
token, bodies past the size limit, JSON bombs, abandoned waits, reads of whole rollouts). Each
kind runs at a bounded rate; what the receiver answers is counted and printed as JSON with the
CPU this process used.

Raw-socket attackers share one asyncio loop and write a body only until the receiver answers:
the bytes on the wire up to the answer are what a client on another machine would send, and
the CPU this machine would otherwise spend copying bodies into sockets already answered is CPU
an attacker elsewhere would not take from the receiver.
``python bench/attackers.py HTTP_URL [--seconds N] [--only KINDS]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import http.client
import json
import resource
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Final

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.payloads import make_request, make_span  # noqa: E402

PB = {"content-type": "application/x-protobuf"}
# The honest clients' rollouts (the "reads" attacker reads the first) and the receiver's token.
HONEST = [(f"ro-50a4{i:08x}", f"at-50a4{i:04x}") for i in range(8)]
MIB = 1 << 20
TOKEN = "soak-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


class Attack:
    """Hostile clients, each kind at a bounded rate; counts the answers they get."""

    def __init__(self, http_url: str, stop: threading.Event) -> None:
        self.http_url = http_url
        self.stop = stop
        self.answers = Counter[str]()
        self.written = 0  # body bytes the raw-socket uploads wrote
        host, port = http_url.removeprefix("http://").rsplit(":", 1)
        self.address = (host, int(port))

    # -- raw sockets on one asyncio loop: cheap for the attacker, costly if not bounded ------

    async def _slow_headers(self) -> None:
        while not self.stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(*self.address)
            except OSError:
                self.answers["slow headers: refused"] += 1
                await asyncio.sleep(0.1)
                continue
            closed = asyncio.ensure_future(reader.read())  # EOF: the receiver closed it
            try:
                for byte in b"POST /v1/traces HTTP/1.1\r\nhost: x\r\nx-slow: " + b"a" * 1000:
                    if self.stop.is_set() or closed.done():
                        break
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(1.0)
                if closed.done():
                    self.answers["slow headers: closed by the receiver"] += 1
                elif not self.stop.is_set():
                    self.answers["slow headers: all sent, never closed"] += 1
            except (ConnectionError, OSError):
                self.answers["slow headers: closed by the receiver"] += 1
            finally:
                _settle(closed)
                writer.close()
            await asyncio.sleep(0.1)

    async def _stalled_upload(self) -> None:
        headers = (
            "POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-protobuf\r\n"
            f"authorization: Bearer {TOKEN}\r\ncontent-length: {40 * MIB}\r\n\r\n"
        ).encode()
        body = bytes(40 * MIB - 1)  # all but the last byte, unless answered first
        while not self.stop.is_set():
            status = await self._until_answered(headers, body, 120)
            self.answers[f"stalled 40 MiB upload: {status}"] += 1
            await asyncio.sleep(1.0)  # as Retry-After says

    async def _slow_api_body(self) -> None:
        """No token, a body that trickles in: the 401 must not wait for it."""
        head = (
            b"POST /v1/agl/rollouts HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 10000\r\n\r\n"
        )
        while not self.stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(*self.address)
            except OSError:
                self.answers["api slow body without token: refused"] += 1
                await asyncio.sleep(0.1)
                continue
            closed = asyncio.ensure_future(reader.read())
            try:
                writer.write(head)
                for _ in range(100):
                    if self.stop.is_set() or closed.done():
                        break
                    writer.write(b" ")
                    await writer.drain()
                    await asyncio.sleep(2.0)
                if closed.done():
                    failed = closed.exception() is not None
                    answer = "reset" if failed else closed.result()[9:12].decode() or "closed"
                    self.answers[f"api slow body without token: {answer}, closed"] += 1
                elif not self.stop.is_set():
                    self.answers["api slow body without token: never closed"] += 1
            except (ConnectionError, OSError):
                self.answers["api slow body without token: closed by the receiver"] += 1
            finally:
                _settle(closed)
                writer.close()
            await asyncio.sleep(0.1)

    async def _abandoned_wait(self) -> None:
        """A wait with no sane timeout, left at once."""
        body = b'{"rollout_ids": ["ro-0000000000aa"], "timeout": 1e400}'
        head = (
            f"POST /v1/agl/waits/rollouts HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}"
            f"\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode()
        while not self.stop.is_set():
            try:
                _, writer = await asyncio.open_connection(*self.address)
                writer.write(head + body)
                await writer.drain()
                await asyncio.sleep(0.5)
                writer.close()
                self.answers["api wait, abandoned"] += 1
            except (ConnectionError, OSError):
                self.answers["api wait: refused"] += 1
            await asyncio.sleep(0.1)

    async def _sockets(self, slow: int, stalled: int, waits: int, api: bool) -> None:
        tasks = [asyncio.ensure_future(self._slow_headers()) for _ in range(slow)]
        tasks += [asyncio.ensure_future(self._stalled_upload()) for _ in range(stalled)]
        tasks += [asyncio.ensure_future(self._slow_api_body()) for _ in range(slow)]
        tasks += [asyncio.ensure_future(self._abandoned_wait()) for _ in range(waits)]
        if api:
            tasks.append(asyncio.ensure_future(self._api_bodies()))
        while not self.stop.is_set():
            await asyncio.sleep(0.2)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def sockets(self, slow: int, stalled: int, waits: int, api: bool) -> None:
        asyncio.run(self._sockets(slow, stalled, waits, api))

    # -- hostile bodies over HTTP ------------------------------------------------------------

    def bodies(self) -> None:
        members = gzip.compress(b"") * (MIB // 20)  # 1 MiB of empty gzip members
        flood = _empty_spans(2 * MIB)  # a million empty spans in 2 MiB
        ids = {
            "agentlightning.rollout_id": "ro-ba0000000000",
            "agentlightning.attempt_id": "at-ba00",
        }
        deep = "[" * 5000 + "]" * 5000
        with httpx.Client(timeout=60) as client:
            while not self.stop.is_set():
                for label, body, extra in (
                    ("gzip members", members, {"content-encoding": "gzip"}),
                    ("empty-span flood", flood, {}),
                    ("poison values", _poison(ids, deep), {}),
                ):
                    status = client.post(
                        self.http_url + "/v1/traces", content=body, headers={**PB, **AUTH, **extra}
                    )
                    self.answers[f"{label}: {status.status_code}"] += 1
                time.sleep(0.1)

    async def _api_bodies(self) -> None:
        """Authenticated abuse of the API: past the size limit, JSON bombs, deep nesting."""
        big = b'{"input": "' + b"x" * (65 * MIB) + b'"}'
        bomb = b'{"input": [' + b"[]," * (7 * MIB) + b"[]]}"
        deep = b'{"input": ' + b"[" * MIB + b"}"
        bodies = (
            ("api 65 MiB body", "/resources", big),
            ("api JSON bomb (7M arrays)", "/rollouts", bomb),
            ("api 1M-deep JSON", "/rollouts/search", deep),
        )
        while not self.stop.is_set():
            for label, path, body in bodies:
                status = await self._post_until_answered("/v1/agl" + path, body)
                self.answers[f"{label}: {status}"] += 1
            await asyncio.sleep(0.1)

    async def _post_until_answered(self, path: str, body: bytes) -> str:
        """POST ``body`` to the API, written until the receiver answers: every body here is
        refused before its end (by its Content-Length, or by the values counted as it arrives),
        and what a client writes after the answer is never read. A client that wrote all of it
        (``httpx`` does) cost this machine a third of a core copying tens of MiB into sockets
        already answered: CPU an attacker on another machine would not take from the receiver."""
        head = (
            f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"authorization: Bearer {TOKEN}\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode()
        return await self._until_answered(head, body, 60)

    async def _until_answered(self, head: bytes, body: bytes, wait: float) -> str:
        """Send a request, its body a piece at a time until the receiver answers (or stops the
        run), then wait at most ``wait`` seconds for the answer; its status, or what ended it."""
        try:
            reader, writer = await asyncio.open_connection(*self.address)
        except OSError:
            return "refused"
        answer = asyncio.ensure_future(reader.readline())
        status = "closed"
        try:
            writer.write(head)
            view = memoryview(body)
            for start in range(0, len(body), _PIECE):
                if answer.done() or self.stop.is_set():
                    break
                writer.write(view[start : start + _PIECE])
                self.written += min(_PIECE, len(body) - start)
                await writer.drain()
                # Loopback takes megabytes before ``drain`` waits: without a turn of the loop
                # here, the answer (sent after the headers) is only seen once the socket's
                # buffers are full, and the rest is copied for nothing. An attacker across a
                # network writes at its link's pace and sees the answer a round trip later.
                await asyncio.sleep(0)
            line = await asyncio.wait_for(asyncio.shield(answer), wait)
            status = line[9:12].decode() or "closed"
        except (ConnectionError, OSError, asyncio.TimeoutError):
            pass
        if answer.done() and not answer.cancelled() and answer.exception() is None:
            status = answer.result()[9:12].decode() or status
        _settle(answer)
        writer.close()
        return status

    def reads(self) -> None:
        """Reads of a whole honest rollout (no limit: upstream allows it), back to back, on one
        kept-alive connection. Each answer is read to its end into one reused buffer and
        dropped: the same request and the same bytes from the receiver as a client that parses
        it (``httpx`` spent a tenth of a core here keeping tens of MiB a read, CPU a client
        elsewhere would not take)."""
        rollout, _ = HONEST[0]
        path = f"/v1/agl/spans?rollout_id={rollout}"
        conn = http.client.HTTPConnection(*self.address, timeout=60)
        buffer = memoryview(bytearray(1 << 20))
        while not self.stop.is_set():
            try:
                conn.request("GET", path, headers=AUTH)
                answer = conn.getresponse()
                while answer.readinto(buffer):
                    pass
                status = str(answer.status)
            except (OSError, http.client.HTTPException):
                status = "closed"
                conn.close()  # the next request connects again
            self.answers[f"api read of a whole honest rollout: {status}"] += 1
            time.sleep(0.1)
        conn.close()


# Bytes a raw-socket attacker writes at once.
_PIECE: Final = 64 * 1024


def _settle(future: asyncio.Future[Any]) -> None:
    """Cancel a reader's future, or take its error if it has one (a connection the receiver
    reset): asyncio logs an error nobody took, and a run would log thousands."""
    if future.done():
        if not future.cancelled():
            future.exception()
    else:
        future.cancel()


def _empty_spans(size: int) -> bytes:
    from google.protobuf.internal.encoder import _VarintBytes

    spans = b"\x12\x00" * (size // 2)
    scope = b"\x12" + _VarintBytes(len(spans)) + spans
    return b"\x0a" + _VarintBytes(len(scope)) + scope


def _poison(ids: dict[str, str], deep: str) -> bytes:
    spans = [
        make_span(attributes={**ids, "agentlightning.span_sequence_id": value})
        for value in (2**63 - 2, 2**63 - 1, float("inf"), 1e300, "99999999999999999999", -1)
    ]
    spans.append(
        make_span(
            "agentlightning.rollout",
            attributes={**ids, "agentlightning.rollout.input": deep},
        )
    )
    return make_request(spans).SerializeToString()


# Attacker kinds, chosen with --only: each alone shows what it costs the honest clients.
KINDS = ("slow", "stalled", "waits", "bodies", "api", "reads")


def attack(http_url: str, seconds: float, kinds: set[str]) -> None:
    """The attacker process: the hostile clients of ``kinds`` for ``seconds``, then their
    answers and the CPU the process used."""
    stop = threading.Event()
    attacker = Attack(http_url, stop)
    counts = (300 * ("slow" in kinds), 50 * ("stalled" in kinds), 50 * ("waits" in kinds))
    threads = [threading.Thread(target=attacker.sockets, args=(*counts, "api" in kinds))]
    if "bodies" in kinds:
        threads.append(threading.Thread(target=attacker.bodies))
    if "reads" in kinds:
        threads.append(threading.Thread(target=attacker.reads))
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(180)
    used = resource.getrusage(resource.RUSAGE_SELF)
    attacker.answers["cpu seconds of the attackers' process"] = round(used.ru_utime + used.ru_stime)
    attacker.answers["MiB of bodies written by the raw-socket uploads"] = attacker.written >> 20
    print(json.dumps(dict(attacker.answers)), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("http_url", help="the receiver's OTLP/HTTP and API origin")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to attack (30)")
    parser.add_argument("--only", default=",".join(KINDS), help="attacker kinds (all)")
    args = parser.parse_args()
    kinds = set(args.only.split(",")) - {""}
    if kinds - set(KINDS):
        parser.error(f"unknown attacker kinds: {', '.join(sorted(kinds - set(KINDS)))}")
    attack(args.http_url, args.seconds, kinds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
