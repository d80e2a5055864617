"""Attribute values nested deeper than protobuf's decoder takes by default, accepted as the
Collector accepts them instead of refusing the whole request.

protobuf stops at 100 nested messages, about 32 levels of ``kvlist_value``. A request that
hits that limit is decoded again with the limit at protobuf's maximum (65,535 messages), on a
thread whose stack is large enough for it (the decoder recurses in C: on an 8 MiB stack it
crashes near 60,000), and every attribute value is then cut to ``MAX_VALUE_DEPTH`` levels: a
deeper ``kvlist_value`` becomes its leaves under dotted keys (the flat form Agent Lightning's
attributes take anyway), a deeper ``array_value`` its JSON text. What is stored can then be read
back by any decoder.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Final

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest as PB2ExportTraceServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue as PB2AnyValue
from opentelemetry.proto.common.v1.common_pb2 import KeyValue as PB2KeyValue

try:  # the upb implementation (protobuf >= 4.21) lets the nesting limit be raised
    from google._upb._message import SetAllowOversizeProtos
except ImportError:  # pragma: no cover - other implementations keep their own limit
    SetAllowOversizeProtos = None

MAX_VALUE_DEPTH: Final = 16
_STACK_BYTES: Final = 64 * 1024 * 1024
_SCALARS: Final = frozenset({"string_value", "bool_value", "int_value", "double_value"})
_lock = threading.Lock()


def deep_decoding_available() -> bool:
    return SetAllowOversizeProtos is not None


def decode_deep(data: bytes) -> PB2ExportTraceServiceRequest:
    """Decode a trace request whose values nest past the default limit, and cap them.

    Raises what ``FromString`` raises for a request that is malformed for another reason.
    """
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            # The limit is process-wide: held raised only while this thread decodes. Requests
            # are decoded on the one decode thread, which waits here meanwhile.
            with _lock:
                SetAllowOversizeProtos(True)
                try:
                    request = PB2ExportTraceServiceRequest.FromString(data)
                finally:
                    SetAllowOversizeProtos(False)
            cap_values(request)
            outcome["request"] = request
        except Exception as exc:  # handed to the caller's thread
            outcome["error"] = exc

    previous = threading.stack_size(_STACK_BYTES)
    try:
        thread = threading.Thread(target=work, name="lightning-otlp-deep-decode")
        thread.start()
    finally:
        threading.stack_size(previous)
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    request: PB2ExportTraceServiceRequest = outcome["request"]
    return request


def cap_values(request: PB2ExportTraceServiceRequest) -> None:
    """Cut every attribute value of ``request`` to ``MAX_VALUE_DEPTH`` levels, in place."""
    lists: list[Any] = []
    for resource_spans in request.resource_spans:
        lists.append(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            lists.append(scope_spans.scope.attributes)
            for span in scope_spans.spans:
                lists.append(span.attributes)
                lists.extend(event.attributes for event in span.events)
                lists.extend(link.attributes for link in span.links)
    values: list[tuple[PB2AnyValue, int]] = [(kv.value, 1) for kvs in lists for kv in kvs]
    while values:
        value, depth = values.pop()
        kind = value.WhichOneof("value")
        if kind == "kvlist_value":
            if depth >= MAX_VALUE_DEPTH:
                _flatten(value)
            else:
                values.extend((kv.value, depth + 1) for kv in value.kvlist_value.values)
        elif kind == "array_value":
            if depth >= MAX_VALUE_DEPTH:
                value.string_value = _json_text(value)
            else:
                values.extend((item, depth + 1) for item in value.array_value.values)


def _flatten(value: PB2AnyValue) -> None:
    """A kvlist value as one level of dotted keys, its nested kvlists spelled into the keys."""
    leaves: list[PB2KeyValue] = []
    stack: list[tuple[str, Any]] = [("", value.kvlist_value)]
    while stack:
        prefix, kvlist = stack.pop()
        for kv in reversed(kvlist.values):
            key = prefix + kv.key
            kind = kv.value.WhichOneof("value")
            if kind == "kvlist_value":
                stack.append((key + ".", kv.value.kvlist_value))
            elif kind == "array_value":
                text = PB2AnyValue(string_value=_json_text(kv.value))
                leaves.append(PB2KeyValue(key=key, value=text))
            elif kind is not None:
                leaf = PB2KeyValue(key=key)
                leaf.value.CopyFrom(kv.value)
                leaves.append(leaf)
    leaves.reverse()
    value.kvlist_value.Clear()
    value.kvlist_value.values.extend(leaves)


def _json_text(value: PB2AnyValue) -> str:
    """The JSON text of a value however deep it nests, without recursion."""
    out: list[str] = []
    # Work items: a value to write, or a literal piece of text.
    stack: list[PB2AnyValue | str] = [value]
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        kind = item.WhichOneof("value")
        if kind in _SCALARS:
            out.append(dumps(getattr(item, kind)))
        elif kind == "bytes_value":
            out.append(dumps(item.bytes_value.hex()))
        elif kind == "array_value":
            pending: list[PB2AnyValue | str] = ["["]
            for i, element in enumerate(item.array_value.values):
                if i:
                    pending.append(",")
                pending.append(element)
            pending.append("]")
            stack.extend(reversed(pending))
        elif kind == "kvlist_value":
            pending = ["{"]
            for i, kv in enumerate(item.kvlist_value.values):
                pending.append(("," if i else "") + dumps(kv.key) + ":")
                pending.append(kv.value)
            pending.append("}")
            stack.extend(reversed(pending))
        else:
            out.append("null")
    return "".join(out)
