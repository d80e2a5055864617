"""Bytes on the wire to OTLP request messages: decompression, protobuf and spec JSON. No I/O."""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from typing import Any, Final, TypeVar, cast

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest as PB2ExportTraceServiceRequest,
)

from ..errors import InvalidRequest, PayloadTooLarge

DEFAULT_MAX_REQUEST_BYTES: Final = 64 * 1024 * 1024

PROTOBUF: Final = "application/x-protobuf"
JSON: Final = "application/json"
MEDIA_TYPES: Final = frozenset({PROTOBUF, JSON})

M = TypeVar("M", bound=Message)

# A compressed body may hold several members back to back; each costs a fresh inflater, so an
# attacker's thousands of empty ones are refused rather than paid for.
MAX_MEMBERS: Final = 1024
_FIRST_WINDOW: Final = 64
_LAST_WINDOW: Final = 256 * 1024

# OTLP JSON carries these ids as hex; protobuf's JSON mapping would read them as base64.
_ID_LENGTHS: Final[dict[str, int]] = {
    "traceId": 16,
    "trace_id": 16,
    "spanId": 8,
    "span_id": 8,
    "parentSpanId": 8,
    "parent_span_id": 8,
}


def media_type(content_type: str | None) -> str:
    """The bare media type of a Content-Type header, lower case, parameters dropped."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def decompress(body: bytes, encoding: str | None, limit: int = DEFAULT_MAX_REQUEST_BYTES) -> bytes:
    """Undo Content-Encoding, never producing more than ``limit`` bytes (gzip bombs stop there)."""
    enc = (encoding or "").strip().lower()
    if enc in ("", "identity"):
        if len(body) > limit:
            raise PayloadTooLarge(
                f"request body of {len(body)} bytes exceeds the {limit}-byte limit"
            )
        return body
    if enc == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif enc == "deflate":
        wbits = zlib.MAX_WBITS
    else:
        raise InvalidRequest(f"unsupported Content-Encoding {encoding!r} (use gzip or identity)")
    try:
        return _inflate(body, wbits, limit, enc)
    except zlib.error as exc:
        raise InvalidRequest(f"corrupt {enc} body: {exc}") from exc


def _inflate(body: bytes, wbits: int, limit: int, enc: str) -> bytes:
    """Inflate member after member (gzip allows several back to back) in linear work.

    zlib hands back whatever input follows a member as a fresh copy, so each member is fed a
    small window that doubles while the member lasts: a body of many tiny members costs its
    size, not its size times the number of members.
    """
    out = bytearray()
    view = memoryview(body)
    size = len(body)
    pos = 0
    members = 0
    inflater = None
    window = _FIRST_WINDOW
    while pos < size:
        if inflater is None:
            members += 1
            if members > MAX_MEMBERS:
                raise InvalidRequest(f"{enc} body has more than {MAX_MEMBERS} members")
            inflater = zlib.decompressobj(wbits)
            window = _FIRST_WINDOW
        data = view[pos : pos + window]
        out += inflater.decompress(data, limit - len(out) + 1)
        if len(out) > limit or inflater.unconsumed_tail:
            raise PayloadTooLarge(f"decompressed request exceeds the {limit}-byte limit")
        if inflater.eof:
            pos += len(data) - len(inflater.unused_data)
            inflater = None
        else:
            pos += len(data)
            window = min(window * 2, _LAST_WINDOW)
    if inflater is not None:
        raise InvalidRequest(f"truncated {enc} body")
    return bytes(out)


def decode_protobuf(data: bytes, message_type: type[M]) -> M:
    try:
        return cast(M, message_type.FromString(data))
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise InvalidRequest(f"malformed protobuf {message_type.DESCRIPTOR.name}: {exc}") from exc


def decode_json(data: bytes, message_type: type[M]) -> M:
    """Parse OTLP JSON: hex ids, camelCase or snake_case keys, enum names or numbers."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"malformed JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidRequest("malformed JSON: the request must be an object")
    _hex_ids_to_base64(doc)
    message: M = message_type()
    try:
        json_format.ParseDict(doc, message, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, AttributeError) as exc:
        raise InvalidRequest(f"malformed OTLP JSON {message_type.DESCRIPTOR.name}: {exc}") from exc
    return message


def decode(data: bytes, media: str, message_type: type[M]) -> M:
    if media == JSON:
        return decode_json(data, message_type)
    return decode_protobuf(data, message_type)


def decode_traces(data: bytes, media: str = PROTOBUF) -> PB2ExportTraceServiceRequest:
    return decode(data, media, PB2ExportTraceServiceRequest)


def encode(message: Message, media: str) -> bytes:
    """Encode a response the way the request came: protobuf bytes or spec JSON."""
    if media == JSON:
        return cast(str, json_format.MessageToJson(message, indent=None)).encode()
    return cast(bytes, message.SerializeToString())


def _hex_ids_to_base64(node: Any) -> None:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                size = _ID_LENGTHS.get(key)
                if size is not None and isinstance(value, str):
                    item[key] = _hex_to_base64(key, value, size)
                elif isinstance(value, (dict, list)):
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, (dict, list)))


def _hex_to_base64(key: str, value: str, size: int) -> str:
    if value == "":
        return ""
    if len(value) != 2 * size:
        raise InvalidRequest(f"{key} {value!r} must be {2 * size} hex digits")
    try:
        raw = binascii.unhexlify(value)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"{key} {value!r} is not hex") from exc
    return base64.b64encode(raw).decode()
