"""Assign every span of a request to a rollout and attempt, and flatten it into store rows.

This is the hot path: one pass over the protobuf message, plain tuples out, no model objects.
Routing order (first match wins): span attributes, resource attributes, configured rollout-key
attributes, then the fallback policy (one rollout per trace, or reject).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest as PB2ExportTraceServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import ArrayValue as PB2ArrayValue
from opentelemetry.proto.common.v1.common_pb2 import KeyValueList as PB2KeyValueList

from . import ids, semconv
from .errors import InvalidRequest

Fallback = Literal["trace", "reject"]
FALLBACKS: Final[tuple[str, ...]] = ("trace", "reject")

_SCALARS: Final = frozenset({"string_value", "bool_value", "int_value", "double_value"})
_STATUS: Final[tuple[str, ...]] = ("UNSET", "OK", "ERROR")
_ZERO_TRACE: Final = bytes(16)
_ZERO_SPAN: Final = bytes(8)
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode

# Where a rollout came from: explicit ids, a rollout-key attribute, or the per-trace fallback.
Origin = Literal["explicit", "key", "trace"]

# (rollout_id, attempt_id or None for "the latest attempt")
Destination = tuple[str, "str | None"]

# A span row without its destination and sequence id:
# (trace_id, span_id, parent_id (bytes or None), name, start_time, end_time, status_code,
#  span (the OTLP Span message's own bytes), resource_id)
SpanRow = tuple[Any, ...]

# Attributes routing looks at. Spans whose bytes do not contain any of these names skip the
# attribute scan entirely: the common case pays for one substring search, not a decode.
_ROUTING_ATTRIBUTES: Final = frozenset(
    {
        semconv.ROLLOUT_ID,
        semconv.ATTEMPT_ID,
        semconv.SPAN_SEQUENCE_ID,
        semconv.ATTEMPT_STATUS,
        semconv.PRIMARY_REWARD_VALUE,
    }
)
_OUTCOMES: Final = frozenset({"succeeded", "failed"})
_AGL_NEEDLE: Final = b"agentlightning."


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    rollout_keys: tuple[str, ...] = ()
    fallback: Fallback = "trace"
    # Mark a per-trace rollout succeeded or failed by its root span's status when it arrives.
    finalize_on_root: bool = False

    def __post_init__(self) -> None:
        if self.fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, not {self.fallback!r}")


@dataclass(slots=True)
class RolloutInfo:
    """What a batch says about a rollout beyond its spans: origin, input, mode, status."""

    origin: Origin
    metadata: dict[str, Any] | None = None
    input: Any = None
    has_input: bool = False
    mode: str | None = None
    first_start: float | None = None
    trace_id: bytes | None = None  # for per-trace rollouts


@dataclass(slots=True)
class SpanBatch:
    """One request, routed: spans grouped by destination, ready for one store transaction."""

    groups: dict[Destination, list[tuple[float, int | None, SpanRow]]] = field(default_factory=dict)
    resources: dict[str, str] = field(default_factory=dict)
    rollouts: dict[str, RolloutInfo] = field(default_factory=dict)
    # Trace affinity: the first destination explicit ids give each trace in this request.
    bindings: dict[bytes, Destination] = field(default_factory=dict)
    # Attempt outcomes the spans report: destination -> (status, end_time).
    outcomes: dict[Destination, tuple[str, float | None]] = field(default_factory=dict)
    # Outcomes of per-trace rollouts from their root spans (``finalize_on_root``): these only
    # apply while the rollout stays per-trace, not once its trace is bound elsewhere.
    root_outcomes: dict[Destination, tuple[str, float | None]] = field(default_factory=dict)
    # Primary rewards (``agentlightning.reward.0.value``) by destination, latest wins.
    rewards: dict[Destination, float] = field(default_factory=dict)
    received: int = 0
    accepted: int = 0
    rejected: int = 0
    reject_reasons: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str, count: int = 1) -> None:
        self.rejected += count
        self.reject_reasons[reason] = self.reject_reasons.get(reason, 0) + count

    def error_message(self) -> str:
        return "; ".join(f"{n} span(s) {reason}" for reason, n in self.reject_reasons.items())


def route(request: PB2ExportTraceServiceRequest, config: RoutingConfig) -> SpanBatch:
    batch = SpanBatch()
    groups = batch.groups
    rollouts = batch.rollouts
    keys = config.rollout_keys
    wanted = _ROUTING_ATTRIBUTES.union(keys)
    key_needles = tuple(k.encode() for k in keys)
    reject_unrouted = config.fallback == "reject"
    trace_rollouts: dict[bytes, str] = {}
    key_rollouts: dict[tuple[str, str], str] = {}
    rollout_span = semconv.ROLLOUT_SPAN
    finalize_on_root = config.finalize_on_root
    bindings = batch.bindings
    no_attrs: dict[str, Any] = {}
    for resource_spans in request.resource_spans:
        resource = resource_spans.resource
        res_attrs = attributes(resource.attributes)
        res_json = _dumps({"attributes": res_attrs, "schema_url": resource_spans.schema_url})
        resource_id = hashlib.blake2b(res_json.encode(), digest_size=8).hexdigest()
        batch.resources[resource_id] = res_json
        res_rollout = _str_or_none(res_attrs.get(semconv.ROLLOUT_ID))
        res_attempt = _str_or_none(res_attrs.get(semconv.ATTEMPT_ID)) if res_rollout else None
        res_seq = res_attrs.get(semconv.SPAN_SEQUENCE_ID)
        res_keys = {k: res_attrs[k] for k in keys if k in res_attrs}
        for scope_spans in resource_spans.scope_spans:
            spans = scope_spans.spans
            batch.received += len(spans)
            for span in spans:
                tid = span.trace_id
                sid = span.span_id
                if len(tid) != 16 or len(sid) != 8 or tid == _ZERO_TRACE or sid == _ZERO_SPAN:
                    _check_id_lengths(tid, sid)
                    batch.reject("without a trace_id or span_id")
                    continue
                pid = span.parent_span_id
                if pid and len(pid) != 8:
                    raise InvalidRequest(f"parent_span_id must be 8 bytes, not {len(pid)}")
                if span.links:
                    _check_links(span.links)
                blob = span.SerializeToString()
                if _AGL_NEEDLE in blob or (key_needles and any(k in blob for k in key_needles)):
                    attrs = _pick(span.attributes, wanted)
                else:
                    attrs = no_attrs
                # 1. span attributes, 2. resource attributes
                # (each key separately: a span's own attempt id joins its resource's rollout id)
                if attrs:
                    rollout_id = _str_or_none(attrs.get(semconv.ROLLOUT_ID))
                    attempt_id = _str_or_none(attrs.get(semconv.ATTEMPT_ID))
                else:
                    rollout_id = attempt_id = None
                if rollout_id is not None:
                    if attempt_id is None and rollout_id == res_rollout:
                        attempt_id = res_attempt
                    origin: Origin = "explicit"
                elif res_rollout is not None:
                    rollout_id, origin = res_rollout, "explicit"
                    if attempt_id is None:
                        attempt_id = res_attempt
                else:
                    attempt_id = None
                    origin = "key"
                    # 3. configured rollout-key attributes
                    for key in keys:
                        value = attrs.get(key)
                        if value is None:
                            value = res_keys.get(key)
                        if value is not None:
                            cache_key = (key, str(value))
                            rollout_id = key_rollouts.get(cache_key)
                            if rollout_id is None:
                                rollout_id = ids.rollout_id_for_key(key, cache_key[1])
                                key_rollouts[cache_key] = rollout_id
                                if rollout_id not in rollouts:
                                    rollouts[rollout_id] = RolloutInfo(
                                        "key",
                                        {"lightning_otlp": {"origin": "key", key: cache_key[1]}},
                                    )
                            break
                    # 4. fallback
                    if rollout_id is None:
                        if reject_unrouted:
                            batch.reject("without rollout ids (fallback policy is 'reject')")
                            continue
                        origin = "trace"
                        rollout_id = trace_rollouts.get(tid)
                        if rollout_id is None:
                            rollout_id = ids.rollout_id_for_trace(tid.hex())
                            trace_rollouts[tid] = rollout_id
                            if rollout_id not in rollouts:
                                rollouts[rollout_id] = RolloutInfo(
                                    "trace",
                                    {"lightning_otlp": {"origin": "trace", "trace_id": tid.hex()}},
                                    trace_id=tid,
                                )
                info = rollouts.get(rollout_id)
                if info is None:
                    info = rollouts[rollout_id] = RolloutInfo(origin)
                start = span.start_time_unix_nano / 1e9 if span.start_time_unix_nano else None
                if start is not None and (info.first_start is None or start < info.first_start):
                    info.first_start = start
                dest = (rollout_id, attempt_id)
                end = span.end_time_unix_nano / 1e9 if span.end_time_unix_nano else None
                code = span.status.code
                name = span.name
                if origin == "explicit":
                    if tid not in bindings:
                        bindings[tid] = dest
                elif finalize_on_root and origin == "trace" and not pid:
                    batch.root_outcomes[dest] = ("failed" if code == 2 else "succeeded", end)
                if name == rollout_span:
                    _rollout_hints(info, attributes(span.attributes))
                    batch.outcomes[dest] = ("failed" if code == 2 else "succeeded", end)
                if attrs:
                    reported = attrs.get(semconv.ATTEMPT_STATUS)
                    if reported in _OUTCOMES:
                        batch.outcomes[dest] = (reported, end)
                    reward = attrs.get(semconv.PRIMARY_REWARD_VALUE)
                    if isinstance(reward, (int, float)) and not isinstance(reward, bool):
                        batch.rewards[dest] = float(reward)
                seq = attrs.get(semconv.SPAN_SEQUENCE_ID, res_seq) if attrs else res_seq
                explicit_seq = _int_or_none(seq) if seq is not None else None
                row = (
                    tid,
                    sid,
                    pid or None,
                    name,
                    start,
                    end,
                    _STATUS[code] if 0 <= code < 3 else "UNSET",
                    blob,
                    resource_id,
                )
                group = groups.get(dest)
                if group is None:
                    group = groups[dest] = []
                group.append((start or 0.0, explicit_seq, row))
    batch.accepted = batch.received - batch.rejected
    return batch


def _pick(kvs: Any, wanted: frozenset[str]) -> dict[str, Any]:
    """Only the attributes routing needs, without decoding the rest."""
    out: dict[str, Any] = {}
    for kv in kvs:
        key = kv.key
        if key in wanted:
            out[key] = _plain(kv.value)
    return out


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


def _array(array: PB2ArrayValue) -> Any:
    items = [_plain(v) for v in array.values]
    kinds = {type(v) for v in items}
    if len(kinds) <= 1 and not kinds & {dict, list, type(None)}:
        return items
    # Mixed or nested arrays have no flat attribute form: keep them as JSON text.
    return _dumps(items)


def _flatten(prefix: str, kvlist: PB2KeyValueList, out: dict[str, Any]) -> None:
    for key, value in attributes(kvlist.values).items():
        out[f"{prefix}.{key}"] = value


def _plain(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind in _SCALARS:
        return getattr(value, kind)
    if kind == "array_value":
        return [_plain(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _plain(kv.value) for kv in value.kvlist_value.values}
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


def _check_links(links: Any) -> None:
    for link in links:
        if len(link.trace_id) not in (0, 16) or len(link.span_id) not in (0, 8):
            raise InvalidRequest("a link's trace_id must be 16 bytes and span_id 8 bytes")


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


def _rollout_hints(info: RolloutInfo, attrs: dict[str, Any]) -> None:
    raw = attrs.get(semconv.ROLLOUT_INPUT)
    if raw is not None:
        try:
            info.input = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            info.input = raw
        info.has_input = True
    mode = attrs.get(semconv.ROLLOUT_MODE)
    if mode in ("train", "val", "test"):
        info.mode = mode


def _check_id_lengths(tid: bytes, sid: bytes) -> None:
    if len(tid) not in (0, 16):
        raise InvalidRequest(f"trace_id must be 16 bytes, not {len(tid)}")
    if len(sid) not in (0, 8):
        raise InvalidRequest(f"span_id must be 8 bytes, not {len(sid)}")


def _str_or_none(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else str(value)


def _int_or_none(value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number >= 0 else None
