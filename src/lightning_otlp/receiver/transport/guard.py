"""The HTTP connection limits uvicorn lacks: a header timeout and a connection cap.

uvicorn times out idle keep-alive connections only after a first response, and a request's
line and headers never: a client sending a byte every few seconds, or nothing at all, held
its connection (and a file descriptor) for good. ``guarded_protocol`` closes a connection whose
request line and headers are not complete within ``header_timeout`` seconds of its opening (or
of its previous response), and answers 503 and closes at once a connection beyond
``max_connections``. The body's own deadline is the ASGI app's (``HTTPReceiver``).
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ...errors import Overloaded
from .. import decode as codec
from ..budget import MemoryBudget
from ..status import answer

NO_ROOM: Final = "requests in flight hold the whole request memory budget; retry later"
_REFUSAL: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"retry-after: 1\r\n"
    b"connection: close\r\n"
    b"content-length: 33\r\n\r\n"
    b"too many connections; retry later"
)


def guarded_protocol(
    header_timeout: float, max_connections: int, budget: MemoryBudget | None = None
) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with these limits, to pass as ``uvicorn.Config(http=...)``.

    With ``budget``, a request whose declared body cannot fit the request memory budget is
    answered 503 and its connection closed right after its headers, before any application
    work (the application reserves the budget itself; this only spares the refusals' cost).
    """
    if header_timeout <= 0 or max_connections <= 0:
        raise ValueError("header_timeout and max_connections must be positive")

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None
        _refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.write(_REFUSAL)
                transport.close()
                return
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._header_timer is None:  # armed on connection, or after the last response
                self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            if self._refused:
                return
            if budget is not None and self._beyond_budget(budget):
                self._refuse()
                return
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if not self._refused:
                super().on_body(body)

        def on_message_complete(self) -> None:
            if not self._refused:
                super().on_message_complete()

        def _beyond_budget(self, budget: MemoryBudget) -> bool:
            for name, value in self.headers:
                if name == b"content-length":
                    try:
                        return int(value) > budget.limit - budget.used
                    except ValueError:
                        return False  # the application answers 400
            return False

        def _refuse(self) -> None:
            self._refused = True
            content_type = dict(self.headers).get(b"content-type", b"").decode("latin-1")
            media = codec.JSON if codec.media_type(content_type) == codec.JSON else codec.PROTOBUF
            result = answer(Overloaded(NO_ROOM))
            body = codec.encode(result.status, media)
            head = [
                b"HTTP/1.1 503 Service Unavailable",
                b"content-type: " + media.encode(),
                b"content-length: " + str(len(body)).encode(),
                *(name + b": " + value for name, value in result.http_headers),
                b"connection: close",
            ]
            self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
            self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # The keep-alive timeout now runs; the next request's headers get a fresh timer.
            self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return GuardedHttpToolsProtocol


def uvicorn_options(
    header_timeout: float,
    idle_timeout: float,
    max_connections: int,
    budget: MemoryBudget | None = None,
) -> dict[str, Any]:
    """The ``uvicorn.Config`` keywords that apply these limits and the keep-alive timeout."""
    return {
        "http": guarded_protocol(header_timeout, max_connections, budget),
        "timeout_keep_alive": max(1, round(idle_timeout)),
    }
