"""OTLP/HTTP as a plain ASGI app: ``POST /v1/traces`` (and metrics, logs), ``GET /health``.

Checks run in the Collector's order: path, method (405), content type (415), size (413),
body, decode (400), export, answer in the request's encoding.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Final

from ...asgi import Message, Receive, Scope, Send
from ...defaults import DEFAULT_BODY_TIMEOUT
from ...errors import (
    InvalidRequest,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)
from .. import decode as codec
from ..auth import BearerAuth
from ..budget import MemoryBudget
from ..pipeline import Pipeline, Signal
from ..status import answer

SIGNAL_PATHS: Final[dict[str, Signal]] = {
    "/v1/traces": "traces",
    "/v1/metrics": "metrics",
    "/v1/logs": "logs",
}
HEALTH_PATHS: Final = frozenset({"/health", "/healthz"})
_NO_ROOM: Final = "requests in flight hold the whole request memory budget; retry later"


class HTTPReceiver:
    """The ASGI application for OTLP/HTTP; with ``auth``, signal paths need a bearer token."""

    def __init__(
        self,
        pipeline: Pipeline,
        auth: BearerAuth | None = None,
        *,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
    ) -> None:
        self.pipeline = pipeline
        self.auth = auth
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        method = scope["method"]
        if path in HEALTH_PATHS:
            await self._health(method, send)
            return
        signal = SIGNAL_PATHS.get(path)
        if signal is None:
            await _plain(send, 404, f"no such path {path!r}; OTLP/HTTP takes POST /v1/traces\n")
            return
        await self._signal(scope, receive, send, signal)

    async def _signal(self, scope: Scope, receive: Receive, send: Send, signal: Signal) -> None:
        path = scope["path"]
        headers = headers_of(scope)
        media = codec.media_type(headers.get("content-type"))
        # Errors answer in the request's encoding when it is one OTLP knows, else protobuf.
        answer_media = media if media in codec.MEDIA_TYPES else codec.PROTOBUF
        read = False
        try:
            if self.auth is not None:
                self.auth.require(headers.get("authorization"))
            if scope["method"] != "POST":
                await _plain(send, 405, f"{path} takes POST\n", [(b"allow", b"POST")])
                return
            if media not in codec.MEDIA_TYPES:
                raise UnsupportedMediaType(
                    f"unsupported Content-Type {headers.get('content-type')!r}: "
                    f"use {codec.PROTOBUF} or {codec.JSON}"
                )
            held = [0]  # bytes of the memory budget this request holds, released at the end
            try:
                body = await read_body(
                    headers,
                    receive,
                    held,
                    limit=self.pipeline.max_request_bytes,
                    budget=self.pipeline.budget,
                    timeout=self.body_timeout,
                )
                read = True
                encoding = headers.get("content-encoding")
                response = await self.pipeline.export(signal, body, encoding, media, "http")
            finally:
                self.pipeline.budget.release(held[0])
        except Exception as exc:  # the client's fault, a retry hint or a defect: ``answer`` says
            result = answer(exc)
            body = codec.encode(result.status, answer_media)
            extra = result.http_headers
            if not read:  # refused before its body: close rather than read the rest to drop it
                extra = [*extra, (b"connection", b"close")]
            await respond(send, result.http_status, body, answer_media, extra)
            return
        await respond(send, 200, codec.encode(response, media), media)

    async def _health(self, method: str, send: Send) -> None:
        if method not in ("GET", "HEAD"):
            await _plain(send, 405, "health takes GET\n", [(b"allow", b"GET")])
            return
        ready = self.pipeline.ready()
        body = json.dumps({"status": "ok" if ready else "unavailable"}).encode()
        await respond(send, 200 if ready else 503, body, "application/json")


async def read_body(
    headers: dict[str, str],
    receive: Receive,
    held: list[int],
    *,
    limit: int,
    budget: MemoryBudget,
    timeout: float,
    each: Callable[[bytes], None] | None = None,
) -> bytes:
    """Read a request body within the limits, for OTLP and the LightningStore API alike: all of
    a declared Content-Length is reserved from ``budget`` before a byte is read (refused at once
    when it does not fit), a chunked body chunk by chunk, and the whole body must arrive within
    ``timeout`` seconds. ``held[0]`` is the reservation, for the caller to release when the
    request is done with its body. ``each`` sees every chunk as it arrives and may refuse the
    body by raising, before the rest is read."""
    declared = headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidRequest(f"bad Content-Length {declared!r}") from None
        if size > limit:
            raise PayloadTooLarge(f"request body of {size} bytes exceeds the {limit}-byte limit")
        if not budget.reserve(size):
            raise Overloaded(_NO_ROOM)
        held[0] = size
    chunks: list[bytes] = []
    total = 0
    deadline = time.monotonic() + timeout
    while True:
        try:
            message = await asyncio.wait_for(receive(), deadline - time.monotonic())
        except asyncio.TimeoutError:
            raise RequestTimeout(f"the body took longer than {timeout:g} s to arrive") from None
        if message["type"] == "http.disconnect":
            raise InvalidRequest("client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        if chunk:
            total += len(chunk)
            if total > limit:
                raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit")
            if total > held[0]:  # chunked, or more than declared (the server refuses that)
                if not budget.reserve(total - held[0]):
                    raise Overloaded(_NO_ROOM)
                held[0] = total
            if each is not None:
                each(chunk)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def close_if_unread(scope: Scope, receive: Receive, send: Send) -> tuple[Receive, Send]:
    """``receive`` and ``send`` that add ``connection: close`` to a response sent before the
    request's body was read to its end: a refusal (401, 413, 408, 503) does not wait for a body
    that may trickle in for minutes, and the connection cannot be reused with bytes of that body
    still unread."""
    headers = headers_of(scope)
    read = [headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers]

    async def receive_tracked() -> Message:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            read[0] = True
        return message

    async def send_closing(message: Message) -> None:
        if message["type"] == "http.response.start" and not read[0]:
            message = dict(message)
            message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
        await send(message)

    return receive_tracked, send_closing


def headers_of(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


async def respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _plain(
    send: Send, status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    await respond(send, status, text.encode(), "text/plain; charset=utf-8", extra)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
