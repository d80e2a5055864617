"""Bytes on the wire to OTLP request messages: decompression, protobuf and spec JSON. No I/O."""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from collections.abc import Iterator
from typing import Any, Final, TypeVar, cast

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest as PB2ExportTraceServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue as PB2AnyValue

from ..defaults import DEFAULT_MAX_REQUEST_BYTES
from ..errors import InvalidRequest, PayloadTooLarge
from .deep import cap_values, decode_deep, deep_decoding_available

PROTOBUF: Final = "application/x-protobuf"
JSON: Final = "application/json"
MEDIA_TYPES: Final = frozenset({PROTOBUF, JSON})

M = TypeVar("M", bound=Message)

# A compressed body may hold several members back to back; each costs a fresh inflater, so an
# attacker's thousands of empty ones are refused rather than paid for.
MAX_MEMBERS: Final = 1024
_FIRST_WINDOW: Final = 64
_LAST_WINDOW: Final = 256 * 1024
# Most resource spans, scope spans and spans (for JSON: objects and arrays) in one request:
# SDKs send 512 spans a request, a Collector's batch processor about 8,192. Two bytes make an
# empty span and decoding one costs about 170 bytes: without this bound a 64 MiB request of
# empty spans held 5.8 GB and kept the store thread busy for 40 s; with it, refusing one costs
# a bounded count of at most this many elements.
MAX_REQUEST_ELEMENTS: Final = 100_000
# An element takes two bytes at least: only a protobuf request larger than this can hold too
# many to decode, and only such a request is counted first.
COUNTED_FROM_BYTES: Final = 2 * MAX_REQUEST_ELEMENTS
# Nested messages the JSON parser may follow once a request is found to nest deeper than its
# default (100); Python's own stack stops it first (about 150 kvlist levels).
_DEEP: Final = 100_000

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
    # Every object or array opens with one of these (strings may hold more: an upper bound).
    containers = data.count(b"{") + data.count(b"[") if len(data) > MAX_REQUEST_ELEMENTS else 0
    if containers > 4 * MAX_REQUEST_ELEMENTS:
        raise PayloadTooLarge(_too_many_json(containers))
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"malformed JSON: {exc}") from exc
    except RecursionError:
        # Before the count below: a document nested this deep is malformed whatever its size.
        raise InvalidRequest("malformed JSON: nested too deep") from None
    if containers > MAX_REQUEST_ELEMENTS:
        raise PayloadTooLarge(_too_many_json(containers))
    if not isinstance(doc, dict):
        raise InvalidRequest("malformed JSON: the request must be an object")
    _hex_ids_to_base64(doc)
    message: M = message_type()
    try:
        try:
            json_format.ParseDict(doc, message, ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            if "too deep" not in str(exc) or message_type is not PB2ExportTraceServiceRequest:
                raise
            # Attribute values nested past the parser's default (about 32 kvlist levels), as
            # protobuf requests may (``deep``): taken as deep as Python's stack lets the parser
            # go, then cut to the depth every reader can decode.
            message = message_type()
            json_format.ParseDict(
                doc, message, ignore_unknown_fields=True, max_recursion_depth=_DEEP
            )
            cap_values(cast(PB2ExportTraceServiceRequest, message))
    except (json_format.ParseError, ValueError, TypeError, AttributeError) as exc:
        raise InvalidRequest(f"malformed OTLP JSON {message_type.DESCRIPTOR.name}: {exc}") from exc
    except RecursionError:
        raise InvalidRequest("malformed OTLP JSON: nested too deep") from None
    return message


def _too_many_json(containers: int) -> str:
    return (
        f"JSON request with {containers} objects and arrays exceeds the limit of"
        f" {MAX_REQUEST_ELEMENTS}: send fewer spans a request"
    )


def decode(data: bytes, media: str, message_type: type[M]) -> M:
    if media == JSON:
        return decode_json(data, message_type)
    return decode_protobuf(data, message_type)


def decode_traces(data: bytes, media: str = PROTOBUF) -> PB2ExportTraceServiceRequest:
    if media != JSON and len(data) > COUNTED_FROM_BYTES:
        elements = count_spans(data, MAX_REQUEST_ELEMENTS)
        if elements > MAX_REQUEST_ELEMENTS:
            raise PayloadTooLarge(
                f"request with more than {MAX_REQUEST_ELEMENTS} resource spans, scope spans and"
                " spans: send fewer spans a request"
            )
    if media == JSON:
        return decode_json(data, PB2ExportTraceServiceRequest)
    try:
        return cast(PB2ExportTraceServiceRequest, PB2ExportTraceServiceRequest.FromString(data))
    except (DecodeError, RuntimeError, ValueError) as exc:
        if "MaxDepth" in str(exc) and deep_decoding_available():
            # Attribute values nested past protobuf's default limit: the Collector takes them.
            try:
                return decode_deep(data)
            except (DecodeError, RuntimeError, ValueError) as deep_exc:
                exc = deep_exc
        raise InvalidRequest(f"malformed protobuf ExportTraceServiceRequest: {exc}") from exc


def count_spans(data: bytes, limit: int) -> int:
    """Resource spans, scope spans and spans in an encoded trace request, counted from the wire
    without decoding a span, and only up to a little past ``limit``.

    Malformed input is left for the decoder to refuse, except group fields (no OTLP message has
    one), which the decoder would skip and this count could not.
    """
    count = 0
    for rs_start, rs_end in _fields(data, 0, len(data), 1):  # ResourceSpans.resource_spans
        count += 1
        for ss_start, ss_end in _fields(data, rs_start, rs_end, 2):  # .scope_spans
            count += 1 + _count_spans_field(data, ss_start, ss_end, limit - count)
            if count > limit:
                return count
    return count


def _count_spans_field(data: bytes, pos: int, end: int, limit: int) -> int:
    """``ScopeSpans.spans`` fields in data[pos:end], up to a little past ``limit``: the loop a
    flood of tiny spans spins in, so a span with a one- or two-byte length (every tiny one,
    and most others) is skipped without leaving it."""
    count = 0
    while pos < end and count <= limit:
        if data[pos] == 0x12 and pos + 2 < end:
            size = data[pos + 1]
            if size < 0x80:  # a tiny span: one length byte
                pos += 2 + size
                count += 1
                continue
            high = data[pos + 2]
            if high < 0x80:  # a span of 128 bytes to 16 KiB (most spans): two length bytes
                pos += 3 + (size & 0x7F | high << 7)
                count += 1
                continue
        for _, field_end in _fields(data, pos, end, 2):
            pos = field_end  # one span with a longer length (or another field before it)
            count += 1
            break
        else:
            return count
    return count


def _fields(data: bytes, pos: int, end: int, number: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each length-delimited field ``number`` of the message in data[pos:end]."""
    while pos < end:
        tag = data[pos]
        pos += 1
        if tag & 0x80:
            tag, pos = _varint(data, pos - 1)
        kind = tag & 7
        if kind == 2:
            size = data[pos] if pos < end else 0
            pos += 1
            if size & 0x80:
                size, pos = _varint(data, pos - 1)
            if pos + size > end:
                return  # malformed: the decoder says so
            if tag >> 3 == number:
                yield pos, pos + size
            pos += size
        elif kind == 0:
            _, pos = _varint(data, pos)
        elif kind == 1:
            pos += 8
        elif kind == 5:
            pos += 4
        else:
            raise InvalidRequest(f"malformed protobuf: wire type {kind} (groups are not OTLP)")


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    for i in range(pos, min(pos + 10, len(data))):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i + 1
        shift += 7
    return 0, len(data) + 1  # truncated or too long: the decoder says so


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


# A second view of an encoded trace request in which each span's attributes are a map. OTLP's
# KeyValue has the wire form of a protobuf map entry (key 1, value 2), so the same bytes decoded
# with ``map<string, AnyValue> attributes = 9`` give every span's attributes as a map built in C:
# routing looks up the few attributes it needs instead of iterating every attribute of every
# span in Python. Duplicate keys keep the last value, as a scan of the attributes does; nothing
# else of a span is declared, so the rest is skipped as unknown fields.
_MAPS_PACKAGE: Final = "lightning_otlp.attribute_maps"


def _add_field(
    message: Any, name: str, number: int, type_name: str = "", repeated: bool = False
) -> None:
    """A string field, or a message field of ``type_name``."""
    field = descriptor_pb2.FieldDescriptorProto
    added = message.field.add(
        name=name,
        number=number,
        type=field.TYPE_MESSAGE if type_name else field.TYPE_STRING,
        label=field.LABEL_REPEATED if repeated else field.LABEL_OPTIONAL,
    )
    if type_name:
        added.type_name = type_name


def _attribute_maps_class() -> Any:
    pool = descriptor_pool.DescriptorPool()
    common = descriptor_pb2.FileDescriptorProto()
    PB2AnyValue.DESCRIPTOR.file.CopyToProto(common)
    pool.Add(common)
    schema = descriptor_pb2.FileDescriptorProto(
        name="lightning_otlp/attribute_maps.proto",
        package=_MAPS_PACKAGE,
        syntax="proto3",
        dependency=[common.name],
    )
    span = schema.message_type.add(name="Span")
    entry = span.nested_type.add(name="AttributesEntry")
    entry.options.map_entry = True
    _add_field(entry, "key", 1)
    _add_field(entry, "value", 2, f".{PB2AnyValue.DESCRIPTOR.full_name}")
    _add_field(span, "attributes", 9, f".{_MAPS_PACKAGE}.Span.AttributesEntry", repeated=True)
    # The path to the spans, with the field numbers of ExportTraceServiceRequest's.
    for name, number, child in (
        ("ScopeSpans", 2, "Span"),
        ("ResourceSpans", 2, "ScopeSpans"),
        ("Request", 1, "ResourceSpans"),
    ):
        _add_field(schema.message_type.add(name=name), "items", number, child, repeated=True)
    pool.Add(schema)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_MAPS_PACKAGE}.Request"))


_AttributeMaps: Final = _attribute_maps_class()


def attribute_maps(data: bytes) -> list[list[list[Any]]] | None:
    """Per resource spans, per scope spans, per span of the encoded trace request ``data``: its
    attributes as a map from key to ``AnyValue``; None where the bytes do not decode so (values
    nested past protobuf's depth limit), for the caller to read the decoded request instead."""
    try:
        request = _AttributeMaps.FromString(data)
    except (DecodeError, RuntimeError, ValueError):
        return None
    return [
        [[span.attributes for span in scope.items] for scope in resource.items]
        for resource in request.items
    ]
