"""Translation of a stored OTLP span (its bytes), for paths that send spans on as OTLP.

The forwarder re-sends stored span bytes; this gives it the same translated view the records
show. Spans whose bytes hold no GenAI convention name are returned as they are, undecoded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from opentelemetry.proto.common.v1.common_pb2 import KeyValue as PB2KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PB2Span

from ..otlp import (
    MapAttributes,
    any_value,
    events_list,
    plain_value,
    span_attribute,
    span_attributes,
)
from . import names as n
from .clock import call_end_ns
from .dispatch import (
    awaits_logs,
    encloses_call,
    moves,
    translated_attributes,
    translation,
)

# Every model call carries one of these names (see ``dispatch.model_call``).
_NEEDLES: Final = (
    n.GENAI_EVENT_PREFIX.encode(),
    n.OI_SPAN_KIND.encode(),
    n.AI_OPERATION_ID.encode(),
    n.LLM_REQUEST_TYPE.encode(),
    n.LITELLM_PREFIX.encode(),
)

# A model call names one of these; one with messages on the span names one of the others.
_CALL_KEYS: Final = frozenset((n.GENAI_OPERATION, n.LLM_REQUEST_TYPE))
_CALL_NEEDLES: Final = tuple(key.encode() for key in _CALL_KEYS)
_CONTENT_NEEDLES: Final = (
    n.GENAI_INPUT_MESSAGES.encode(),
    n.GENAI_OUTPUT_MESSAGES.encode(),
    (n.AGL_PROMPT + ".").encode(),
    (n.AGL_COMPLETION + ".").encode(),
    n.OI_SPAN_KIND.encode(),
    n.AI_OPERATION_ID.encode(),
)

# (trace_id, span_id) -> the GenAI log records joined onto that span, as span events.
EventLookup = Callable[[bytes, bytes], list[dict[str, Any]]]
# The span's stored resource (``attributes``, ``schema_url``), asked for only when its name alone
# cannot tell (Agent Lightning's LLM proxy and LiteLLM share span names).
ResourceLookup = Callable[[], dict[str, Any]]
# (trace_id, span_id) -> whether that span has model-call children (``dispatch.encloses_call``).
EnclosesLookup = Callable[[bytes, bytes], bool]


def may_be_call(blob: bytes) -> bool:
    """False when a stored span's bytes name no model-call convention: no translation can
    change its record unless GenAI log records are joined onto it."""
    return any(needle in blob for needle in _NEEDLES)


def translate_span_bytes(
    blob: bytes,
    joined: EventLookup | None = None,
    resource: ResourceLookup | None = None,
    encloses: EnclosesLookup | None = None,
) -> bytes:
    """The span's bytes in Agent Lightning's shape if it is a model call, else ``blob`` itself.

    Without ``resource``, spans named like the LLM proxy's are taken to be the proxy's.
    """
    if not may_be_call(blob):
        return blob
    span = PB2Span.FromString(blob)
    if encloses is not None and encloses(span.trace_id, span.span_id):
        return blob
    record: dict[str, Any] = {"name": span.name}
    if span.name in n.AGL_PROXY_SPANS:
        if resource is None:
            return blob
        record["resource"] = resource()
    extra = joined(span.trace_id, span.span_id) if joined is not None else []
    original = span_attributes(blob)
    record["attributes"] = original
    record["events"] = [*events_list(span.events), *extra]
    written = translation(record)
    if written is None:
        return blob
    if moves(original) or any(original[k] != written[k] for k in original.keys() & written):
        # Rare: translation moves or changes some of the span's own attributes; those go
        # after the others, with the ones it adds.
        attrs = translated_attributes(original, written)
        kept_keys = {k for k, v in original.items() if attrs.get(k, _GONE) == v}
        kept = [kv for kv in span.attributes if kv.key in kept_keys]
        del span.attributes[:]
        span.attributes.extend(kept)
        appended = b"".join(span_attribute(k, v) for k, v in attrs.items() if k not in kept_keys)
    else:
        # Usually translation only adds: the span's own attributes stay as they were encoded.
        appended = b"".join(span_attribute(k, v) for k, v in written.items() if k not in original)
    span.name = n.AGL_LLM_CALL_NAME
    span.end_time_unix_nano = call_end_ns(span.start_time_unix_nano, span.end_time_unix_nano)
    for event in extra:
        added = span.events.add()
        added.name = event["name"]
        added.time_unix_nano = int((event.get("timestamp") or 0) * 1e9)
        added.attributes.extend(
            PB2KeyValue(key=k, value=any_value(v)) for k, v in event["attributes"].items()
        )
    out: bytes = span.SerializeToString() + appended
    return out


_GONE: Final = object()


def span_encloses_call(name: str, blob: bytes, attributes_map: Any = None) -> bool:
    """``dispatch.encloses_call`` for a span's name and bytes, as stored: most spans are told
    by their bytes alone, undecoded; the rest by the few attributes asked of ``attributes_map``
    (the span's from ``receiver.decode.attribute_maps``) when given, else of its bytes."""
    if n.AGL_LLM_CALL_NAME in name or name in n.AGL_PROXY_SPANS:
        return True
    if not may_be_call(blob):
        return False
    attrs: Mapping[str, Any] = (
        span_attributes(blob) if attributes_map is None else MapAttributes(attributes_map)
    )
    if encloses_call({"name": name, "attributes": attrs}):
        return True
    if any(key in attrs for key in _CALL_KEYS):
        return False  # told by its attributes: events cannot change it
    # A call whose messages are span events only: the events are read.
    events = events_list(PB2Span.FromString(blob).events)
    return bool(events) and encloses_call({"name": name, "attributes": attrs, "events": events})


def span_awaits_logs(blob: bytes) -> bool:
    """``dispatch.awaits_logs`` for a stored span's bytes; most spans are told by their bytes
    alone, undecoded."""
    if not any(needle in blob for needle in _CALL_NEEDLES):
        return False
    if any(needle in blob for needle in _CONTENT_NEEDLES):
        return False
    # Past the needles, no content, Vercel or OpenInference attribute can be on the span: what
    # is left to read is its name, the two attributes that say "chat", and its events' names.
    span = PB2Span.FromString(blob)
    record = {
        "name": span.name,
        "attributes": {
            kv.key: plain_value(kv.value) for kv in span.attributes if kv.key in _CALL_KEYS
        },
        "events": [{"name": event.name} for event in span.events],
    }
    return awaits_logs(record)
