"""OTLP protobuf values to the plain Python forms Agent Lightning's records hold. No I/O."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Mapping
from typing import Any, Final

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from opentelemetry.proto.common.v1.common_pb2 import AnyValue as PB2AnyValue
from opentelemetry.proto.common.v1.common_pb2 import ArrayValue as PB2ArrayValue
from opentelemetry.proto.common.v1.common_pb2 import KeyValue as PB2KeyValue
from opentelemetry.proto.common.v1.common_pb2 import KeyValueList as PB2KeyValueList

_SCALARS: Final = frozenset({"string_value", "bool_value", "int_value", "double_value"})
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode


def attributes(kvs: Any) -> dict[str, Any]:
    """OTLP KeyValues to a flat dict of the value types Agent Lightning's models accept."""
    out: dict[str, Any] = {}
    for kv in kvs:
        value = kv.value
        kind = value.WhichOneof("value")
        if kind in _SCALARS:
            out[kv.key] = getattr(value, kind)
        elif kind == "array_value":
            out[kv.key] = _array(value.array_value)
        elif kind == "kvlist_value":
            _flatten(kv.key, value.kvlist_value, out)
        elif kind == "bytes_value":
            out[kv.key] = value.bytes_value.hex()
    return out


def _span_attributes_class() -> Any:
    """A Span of which only the attributes are declared, each as its encoded bytes."""
    field = descriptor_pb2.FieldDescriptorProto
    schema = descriptor_pb2.FileDescriptorProto(
        name="lightning_otlp/span_attributes.proto", package="lightning_otlp", syntax="proto3"
    )
    span = schema.message_type.add(name="SpanAttributes")
    span.field.add(name="attributes", number=9, type=field.TYPE_BYTES, label=field.LABEL_REPEATED)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(schema)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("lightning_otlp.SpanAttributes")
    )


_SpanAttributes: Final = _span_attributes_class()
# Encoded attributes seen lately -> their (key, value) pairs. Spans repeat most of their small
# attributes (system, model, operation, rollout ids): those are decoded once, not per span.
_decoded: dict[bytes, tuple[tuple[str, Any], ...]] = {}
_CACHED_BYTES: Final = 256
_CACHED_ATTRIBUTES: Final = 4096


def span_attributes(blob: bytes) -> dict[str, Any]:
    """``attributes`` of the encoded OTLP Span ``blob``'s attributes, which the caller has
    decoded whole already (so these bytes are known to be a valid Span)."""
    out: dict[str, Any] = {}
    for raw in _SpanAttributes.FromString(blob).attributes:
        pairs = _decoded.get(raw)
        if pairs is None:
            pairs = tuple(attributes((PB2KeyValue.FromString(raw),)).items())
            if len(raw) <= _CACHED_BYTES:
                if len(_decoded) >= _CACHED_ATTRIBUTES:
                    _decoded.clear()
                _decoded[raw] = pairs
        for key, value in pairs:
            out[key] = list(value) if type(value) is list else value
    return out


class MapAttributes(Mapping[str, Any]):
    """A span's attributes as ``receiver.decode.attribute_maps`` decoded them (a map, in C),
    each value made plain only when read: asking a few keys of a span decodes no other value.
    A key-value list value is one nested dict here, not flattened as ``attributes`` flattens it
    (OpenTelemetry's SDKs write none on spans)."""

    __slots__ = ("_map",)

    def __init__(self, values: Any) -> None:
        self._map = values

    def __getitem__(self, key: str) -> Any:
        values = self._map
        if key not in values:  # a missing key is never looked up: the map would add it
            raise KeyError(key)
        value = values[key]
        return value.string_value or plain_value(value)

    def get(self, key: str, default: Any = None) -> Any:
        values = self._map
        if key not in values:
            return default
        value = values[key]
        return value.string_value or plain_value(value)

    def __contains__(self, key: object) -> bool:
        return key in self._map

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)


def _array(array: PB2ArrayValue) -> Any:
    items = [plain_value(v) for v in array.values]
    kinds = {type(v) for v in items}
    if len(kinds) <= 1 and not kinds & {dict, list, type(None)}:
        return items
    # Mixed or nested arrays have no flat attribute form: keep them as JSON text.
    return _dumps(items)


def _flatten(prefix: str, kvlist: PB2KeyValueList, out: dict[str, Any]) -> None:
    for key, value in attributes(kvlist.values).items():
        out[f"{prefix}.{key}"] = value


def plain_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind in _SCALARS:
        return getattr(value, kind)
    if kind == "array_value":
        return [plain_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: plain_value(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return None


def events_list(events: Any) -> list[dict[str, Any]]:
    return [
        {
            "name": e.name,
            "attributes": attributes(e.attributes),
            "timestamp": e.time_unix_nano / 1e9 if e.time_unix_nano else None,
        }
        for e in events
    ]


def links_list(links: Any) -> list[dict[str, Any]]:
    out = []
    for link in links:
        tid, sid = link.trace_id, link.span_id
        out.append(
            {
                "context": {
                    "trace_id": tid.hex().rjust(32, "0"),
                    "span_id": sid.hex().rjust(16, "0"),
                    "is_remote": bool(link.flags & 0x200),
                    "trace_state": parse_trace_state(link.trace_state),
                },
                "attributes": attributes(link.attributes) or None,
            }
        )
    return out


def parse_trace_state(value: str) -> dict[str, str]:
    """W3C tracestate header text to the dict form Agent Lightning's SpanContext keeps."""
    if not value:
        return {}
    out: dict[str, str] = {}
    for member in value.split(","):
        key, sep, val = member.strip().partition("=")
        if sep and key:
            out[key] = val
    return out


def any_value(value: Any) -> PB2AnyValue:
    """A plain value (an attribute, a stored resource's JSON) back as an OTLP ``AnyValue``."""
    out = PB2AnyValue()
    if isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int):
        out.int_value = value
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, (list, tuple)):
        out.array_value.values.extend(any_value(v) for v in value)
    elif isinstance(value, dict):
        out.kvlist_value.values.extend(
            PB2KeyValue(key=str(k), value=any_value(v)) for k, v in value.items()
        )
    elif value is not None:
        out.string_value = str(value)
    return out


# Hand-written wire format, for the hot paths that append to a span's bytes: a few us a field
# less than building and serialising protobuf messages (upb) for each.
_BYTE: Final = [bytes((i,)) for i in range(0x80)]
_DOUBLE: Final = struct.Struct("<d").pack


def varint(value: int) -> bytes:
    """A protobuf varint (negative values as 64-bit two's complement, as int64 fields are)."""
    if 0 <= value < 0x80:
        return _BYTE[value]
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_field(number: int, data: bytes) -> bytes:
    """A length-delimited field: a string, bytes or a message."""
    return varint(number << 3 | 2) + varint(len(data)) + data


def span_attribute(key: str, value: Any) -> bytes:
    """A Span's attribute field (``attributes``, 9) encoded as ``any_value`` and protobuf would
    encode it; appended to a Span's bytes, it comes after the attributes already there."""
    if type(value) is str and len(value) <= _SHORT_VALUE:
        # Short text repeats (roles, finish reasons, span names, conventions): encoded once.
        pair = (key, value)
        found = _short_attributes.get(pair)
        if found is None:
            if len(_short_attributes) >= _CACHED_ATTRIBUTES:
                _short_attributes.clear()
            found = _short_attributes[pair] = _span_attribute(key, value)
        return found
    return _span_attribute(key, value)


def _span_attribute(key: str, value: Any) -> bytes:
    if isinstance(value, str):
        data = value.encode()
        encoded = b"\x0a" + varint(len(data)) + data
    elif isinstance(value, bool):
        encoded = b"\x10" + varint(int(value))
    elif isinstance(value, int) and -(1 << 63) <= value < 1 << 63:
        encoded = b"\x18" + varint(value)
    elif isinstance(value, float):
        encoded = b"\x21" + _DOUBLE(value)
    else:
        return length_field(9, PB2KeyValue(key=key, value=any_value(value)).SerializeToString())
    field = _key_fields.get(key)
    if field is None:
        if len(_key_fields) >= _CACHED_ATTRIBUTES:
            _key_fields.clear()
        field = _key_fields[key] = length_field(1, key.encode())
    pair = field + b"\x12" + varint(len(encoded)) + encoded  # KeyValue: key, value
    return b"\x4a" + varint(len(pair)) + pair  # Span.attributes


_key_fields: dict[str, bytes] = {}  # attribute keys repeat: each encoded once
_SHORT_VALUE: Final = 32
_short_attributes: dict[tuple[str, str], bytes] = {}
