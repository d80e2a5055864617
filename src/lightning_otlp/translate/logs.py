"""GenAI log records (OTel's per-message and per-operation events) as span events.

Instrumentations that follow the GenAI conventions by default put message content in log
records that carry the span's trace and span ids. The store keeps those records and joins them
onto their span at read time, as events of the span, so that translation stays a pure function
of one span record.
"""

from __future__ import annotations

import json
from typing import Any, Final

from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord as PB2LogRecord

from ..otlp import attributes, plain_value
from . import names as n

_dumps: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode


def event_name(record: PB2LogRecord) -> str:
    """The record's event name, from its field or (older SDKs) its ``event.name`` attribute."""
    if record.event_name:
        return record.event_name
    for kv in record.attributes:
        if kv.key == n.EVENT_NAME_ATTRIBUTE:
            return str(kv.value.string_value)
    return ""


def is_genai_event(record: PB2LogRecord) -> bool:
    """A GenAI event that belongs to a span: the only log records the receiver keeps."""
    return (
        len(record.trace_id) == 16
        and len(record.span_id) == 8
        and any(record.trace_id)
        and any(record.span_id)
        and event_name(record).startswith(n.GENAI_EVENT_PREFIX)
    )


def answers_call(record: PB2LogRecord) -> bool:
    """A GenAI event with the call's response: once it is here, the call's messages are too."""
    return event_name(record) in n.GENAI_RESPONSE_EVENTS


def log_event(record: PB2LogRecord) -> dict[str, Any]:
    """A stored GenAI log record as an Agent Lightning span event (``name``, ``attributes``...)."""
    attrs = attributes(record.attributes)
    attrs.pop(n.EVENT_NAME_ATTRIBUTE, None)
    if record.HasField("body"):
        attrs[n.LOG_BODY] = _dumps(plain_value(record.body))
    attrs[n.LOG_SOURCE] = "log"
    stamp = record.time_unix_nano or record.observed_time_unix_nano
    return {"name": event_name(record), "attributes": attrs, "timestamp": stamp / 1e9 or None}
