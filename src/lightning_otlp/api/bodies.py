"""JSON bodies in and out of ``/v1/agl``: parsed with bounded work, encoded with orjson, and
every error answered through the one error map (``receiver.status.api_answer``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..asgi import Receive, Scope, Send
from ..errors import PayloadTooLarge
from ..receiver.status import api_answer
from ..store.lightning import Page, Query, Record, SpanOrder
from . import wire
from .wire import Fields

# Deeper request bodies are refused (422): stored records are encoded again, within this depth.
MAX_JSON_DEPTH: Final = 100
_TOO_DEEP: Final = object()


def json_response(value: Any, status: int = 200) -> Response:
    return Response(dumps(value), status, media_type="application/json")


def dumps(value: Any) -> bytes:
    # orjson: a page of 500 spans encodes in a tenth of the stdlib's time. It refuses what
    # JSON cannot say exactly (integers past 64 bits); the stdlib writes those. Bytes are
    # records the store already encoded (``encoded`` pages), sent as they are.
    try:
        return orjson.dumps(value, default=_fragment, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return json.dumps(value, default=json.loads, separators=(",", ":")).encode()


def _fragment(value: Any) -> orjson.Fragment:
    if isinstance(value, bytes):
        return orjson.Fragment(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def page_response(page: Page) -> Response:
    return json_response(page.as_dict())


async def large_page_response(page: Page) -> Response:
    """A page that may hold a whole rollout's spans, encoded off the event loop a slice at a
    time (one orjson call holds the interpreter lock until it ends, so a page of 100,000 spans
    in one call would stall every other request, health answers included) and sent as those
    slices: tens of megabytes are never copied into one buffer, and the transport's flow
    control holds back the rest while a reader lags."""
    if len(page.items) <= PAGE_SLICE:
        return page_response(page)
    return PartsResponse(await asyncio.to_thread(_page_parts, page))


class PartsResponse(Response):
    """A 200 JSON answer whose body is ``parts``, sent one after another."""

    def __init__(self, parts: list[bytes]) -> None:
        super().__init__(b"", 200, media_type="application/json")
        self.headers["content-length"] = str(sum(len(part) for part in parts))
        self.parts = parts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        parts = self.parts
        last = len(parts) - 1
        for i in range(len(parts)):
            part, parts[i] = parts[i], b""  # let go once sent: memory falls as the answer goes
            await send({"type": "http.response.body", "body": part, "more_body": i < last})


class SlicedResponse(Response):
    """A 200 JSON page of every span past an offset, each slice of ``step`` spans read once
    the one before is sent (``SpanOrder``): chunked, as its length is not known before, and
    read no further once the client has gone."""

    def __init__(self, order: SpanOrder, query: Query, read: Read, step: int) -> None:
        super().__init__(b"", 200, media_type="application/json")
        self.raw_headers = [(b"content-type", b"application/json")]
        self.order, self.query, self.read, self.step = order, query, read, step

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        gone = asyncio.ensure_future(disconnected(receive))
        try:
            order, items, sent, head = self.order, self.order.first, 0, b'{"items":['
            while True:
                body = head + await asyncio.to_thread(_joined, items, sent > 0)
                await send({"type": "http.response.body", "body": body, "more_body": True})
                sent, head = sent + len(items), b""
                done = sent - len(order.first)  # of ``order.rest``
                rest = order.rest[done : done + self.step]
                if not rest or gone.done():
                    break
                items = await self.read(rest)
            if gone.done():
                return  # nobody reads the rest
            tail = _tail(self.query.limit, self.query.offset, order.total)
            await send({"type": "http.response.body", "body": tail})
        finally:
            gone.cancel()


def _joined(items: Sequence[Any], after: bool) -> bytes:
    """Records as JSON, comma-separated (led by one ``after`` others); a record the store
    encoded is taken as it is, without a call per record into orjson."""
    records = [r if type(r) is bytes else dumps(r) for r in items]
    if after and records:
        records.insert(0, b"")
    return b",".join(records)


def _tail(limit: int, offset: int, total: int) -> bytes:
    """A page's end, after its last record."""
    return b"]," + dumps({"limit": limit, "offset": offset, "total": total})[1:]


async def disconnected(receive: Receive) -> None:
    """Returns once the client has gone (the body was read: the next message is the end)."""
    while (await receive())["type"] != "http.disconnect":
        pass


# A further read of an answer being sent: the records of these spans.
Read = Callable[[Sequence[int]], Awaitable[list[Any]]]


def _page_parts(page: Page) -> list[bytes]:
    """The page's JSON in parts of ``PAGE_SLICE`` records. The page is this answer's alone:
    each slice's records are let go once encoded, so a page of hundreds of thousands of records
    is never held twice over, as records and as parts."""
    items = page.items
    owned: list[Any] | None = items if isinstance(items, list) else None
    parts = [b'{"items":[']
    for start in range(0, len(items), PAGE_SLICE):
        chunk = items[start : start + PAGE_SLICE]
        if owned is not None:
            owned[start : start + len(chunk)] = [None] * len(chunk)
        parts.append(_joined(chunk, start > 0))
        del chunk
    parts.append(_tail(page.limit, page.offset, page.total))
    return parts


# Records per orjson call when a large page is encoded.
PAGE_SLICE: Final = 500


def query_fields(request: Request, lists: set[str] | None = None) -> Fields:
    """The query as ``Fields``; names in ``lists`` may repeat (``?a=1&a=2``)."""
    data: Record = {}
    for key, value in request.query_params.multi_items():
        if lists and key in lists:
            data.setdefault(key, []).append(value)
        else:
            data[key] = value
    return Fields(data, "query")


def parse_json(body: bytes, max_values: int) -> Any:
    """Parse a request body with a bounded amount of work: more than ``max_values`` values (an
    upper bound counted in C before parsing) is refused 413, nesting past ``MAX_JSON_DEPTH``
    422. The stdlib parses, as in upstream's server (orjson would read integers past 64 bits as
    floats), so both take and refuse the same bodies."""
    if count_values(body, max_values) > max_values:
        raise too_many_values(max_values)
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise wire.error("json_invalid", ["body", 0], f"JSON decode error: {exc}", {}) from None
    except RecursionError:
        document = _TOO_DEEP
    if document is _TOO_DEEP or _deeper_than(document, MAX_JSON_DEPTH):
        # Records are stored and answered as JSON again: nesting this deep cannot round-trip.
        raise wire.error(
            "json_invalid",
            ["body", 0],
            f"JSON decode error: nested deeper than {MAX_JSON_DEPTH} levels",
            {},
        )
    return document


def count_values(body: bytes, max_values: int) -> int:
    """``[``, ``{`` and ``,`` in the body, counted a slice at a time and only until past
    ``max_values``: one count over a 20 MiB body holds the interpreter lock for tens of
    milliseconds, and a bomb is refused after reading as much as the limit allows."""
    values = 0
    for start in range(0, len(body), COUNT_SLICE):
        end = start + COUNT_SLICE
        values += body.count(b"[", start, end) + body.count(b"{", start, end)
        values += body.count(b",", start, end)
        if values > max_values:
            break
    return values


def too_many_values(max_values: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the JSON body holds more than {max_values} values; at most {max_values} are parsed"
    )


# Bytes of a JSON body counted per call (``_count_values``).
COUNT_SLICE: Final = 256 * 1024


def _deeper_than(document: Any, limit: int) -> bool:
    """Whether ``document`` nests lists and objects more than ``limit`` deep (no recursion)."""
    stack: list[tuple[Any, int]] = [(document, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, (dict, list)))
    return False


async def guarded(handler: Callable[[], Awaitable[Response]]) -> Response:
    """The handler's answer, or its error's as the one error map decides (``api_answer``)."""
    try:
        return await handler()
    except Exception as exc:
        result = api_answer(exc)
        response = json_response(result.body, result.http_status)
        for name, value in result.http_headers:
            response.headers[name.decode()] = value.decode()
        return response
