"""Assign every span of a request to a rollout and attempt, and flatten it into store rows.

This is the hot path: one pass over the protobuf message, plain tuples out, no model objects.
Routing order (first match wins): span attributes, resource attributes, configured rollout-key
attributes, then the fallback policy (one rollout per trace, or reject).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Final, Literal

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest as PB2ExportTraceServiceRequest,
)

from .. import ids, semconv
from ..batch import (
    MAX_SEQUENCE_ID,
    Origin,
    Outcome,
    RolloutInfo,
    SpanBatch,
    SpanRow,
)
from ..defaults import FALLBACKS
from ..errors import InvalidRequest
from ..otlp import attributes, plain_value
from ..translate.otlp import span_encloses_call
from .decode import PROTOBUF, attribute_maps

Fallback = Literal["trace", "reject"]

# A span's row made without ``SpanRow``'s own ``__new__`` (a Python function call per span).
_new_row = tuple.__new__

_STATUS: Final[tuple[str, ...]] = ("UNSET", "OK", "ERROR")
_ZERO_TRACE: Final = bytes(16)
_ZERO_SPAN: Final = bytes(8)
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode

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
# A rollout input nested deeper than this is kept as its text: every reader (the store's JSON,
# agentlightning's models) can then handle it without running out of stack.
MAX_INPUT_DEPTH: Final = 100
_BAD_SEQUENCE: Final = (
    f"their {semconv.SPAN_SEQUENCE_ID} (not a whole number from 0 to {MAX_SEQUENCE_ID})"
)
_BAD_REWARD: Final = f"their {semconv.PRIMARY_REWARD_VALUE} (not a finite number)"
_DEEP_INPUT: Final = (
    f"their {semconv.ROLLOUT_INPUT} as JSON (nested deeper than {MAX_INPUT_DEPTH}; kept as text)"
)


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    rollout_keys: tuple[str, ...] = ()
    fallback: Fallback = "trace"
    # Mark a per-trace rollout succeeded or failed by its root span's status when it arrives.
    finalize_on_root: bool = False

    def __post_init__(self) -> None:
        if self.fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, not {self.fallback!r}")


def route(
    request: PB2ExportTraceServiceRequest,
    config: RoutingConfig,
    data: bytes | None = None,
    media: str = PROTOBUF,
) -> SpanBatch:
    """Route ``request``, decoded from ``data`` of type ``media`` when the caller has those:
    protobuf bytes are read a second time for each span's attributes as a map (other requests
    are encoded first)."""
    batch = SpanBatch()
    groups = batch.groups
    rollouts = batch.rollouts
    keys = config.rollout_keys
    wanted = _ROUTING_ATTRIBUTES.union(keys)
    wanted_keys = tuple(wanted)
    maps = attribute_maps(
        data if data is not None and media == PROTOBUF else request.SerializeToString()
    )
    no_maps: list[list[Any]] = []
    key_needles = tuple(k.encode() for k in keys)
    reject_unrouted = config.fallback == "reject"
    trace_rollouts: dict[bytes, str] = {}
    key_rollouts: dict[tuple[str, str], str] = {}
    rollout_span = semconv.ROLLOUT_SPAN
    finalize_on_root = config.finalize_on_root
    bindings = batch.bindings
    calls = batch.calls
    no_attrs: dict[str, Any] = {}
    for r_index, resource_spans in enumerate(request.resource_spans):
        if not any(scope_spans.spans for scope_spans in resource_spans.scope_spans):
            continue  # nothing to store: skip the resource's encoding and hashing
        resource = resource_spans.resource
        res_attrs = attributes(resource.attributes)
        res_json = _dumps({"attributes": res_attrs, "schema_url": resource_spans.schema_url})
        resource_id = hashlib.blake2b(res_json.encode(), digest_size=8).hexdigest()
        batch.resources[resource_id] = res_json
        res_rollout = _str_or_none(res_attrs.get(semconv.ROLLOUT_ID))
        res_attempt = _str_or_none(res_attrs.get(semconv.ATTEMPT_ID)) if res_rollout else None
        res_seq = res_attrs.get(semconv.SPAN_SEQUENCE_ID)
        res_keys = {k: res_attrs[k] for k in keys if k in res_attrs}
        resource_maps = maps[r_index] if maps is not None else no_maps
        for s_index, scope_spans in enumerate(resource_spans.scope_spans):
            spans = scope_spans.spans
            batch.received += len(spans)
            span_maps = resource_maps[s_index] if maps is not None else None
            for index, span in enumerate(spans):
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
                    if span_maps is None:
                        attrs = _pick(span.attributes, wanted)
                    else:
                        found = span_maps[index]
                        attrs = {}
                        for key in wanted_keys:
                            if key in found:
                                value = found[key]
                                # A non-empty string is the common case: one read, no dispatch.
                                attrs[key] = value.string_value or plain_value(value)
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
                    batch.root_outcomes[dest] = Outcome("failed" if code == 2 else "succeeded", end)
                if name == rollout_span:
                    _rollout_hints(info, attributes(span.attributes), batch)
                    batch.outcomes[dest] = Outcome("failed" if code == 2 else "succeeded", end)
                if attrs:
                    reported = attrs.get(semconv.ATTEMPT_STATUS)
                    if reported in _OUTCOMES:
                        batch.outcomes[dest] = Outcome(reported, end)
                    reward = attrs.get(semconv.PRIMARY_REWARD_VALUE)
                    if isinstance(reward, (int, float)) and not isinstance(reward, bool):
                        if math.isfinite(reward):
                            batch.rewards[dest] = float(reward)
                        else:
                            batch.drop(_BAD_REWARD)
                seq = attrs.get(semconv.SPAN_SEQUENCE_ID, res_seq) if attrs else res_seq
                explicit_seq = None
                if seq is not None:
                    explicit_seq = _sequence_id(seq)
                    if explicit_seq is None:
                        batch.drop(_BAD_SEQUENCE)
                row = _new_row(
                    SpanRow,
                    (
                        tid,
                        sid,
                        pid or None,
                        name,
                        start,
                        end,
                        _STATUS[code] if 0 <= code < 3 else "UNSET",
                        blob,
                        resource_id,
                    ),
                )
                if pid and span_encloses_call(
                    name, blob, span_maps[index] if span_maps is not None else None
                ):
                    calls.add((tid, sid))
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
            out[key] = plain_value(kv.value)
    return out


def _check_links(links: Any) -> None:
    for link in links:
        if len(link.trace_id) not in (0, 16) or len(link.span_id) not in (0, 8):
            raise InvalidRequest("a link's trace_id must be 16 bytes and span_id 8 bytes")


def _rollout_hints(info: RolloutInfo, attrs: dict[str, Any], batch: SpanBatch) -> None:
    raw = attrs.get(semconv.ROLLOUT_INPUT)
    if raw is not None:
        try:
            info.input = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            info.input = raw
        except RecursionError:
            info.input = raw
            batch.drop(_DEEP_INPUT)
        else:
            if _deeper_than(info.input, MAX_INPUT_DEPTH):
                info.input = raw
                batch.drop(_DEEP_INPUT)
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


def _sequence_id(value: Any) -> int | None:
    """A usable explicit sequence id, or None: whole, from 0 to ``MAX_SEQUENCE_ID``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not value.is_integer():  # also inf and nan
            return None
        number = int(value)
    elif isinstance(value, int):
        number = value
    elif isinstance(value, str) and len(value) <= 20:
        try:
            number = int(value)
        except ValueError:
            return None
    else:
        return None
    return number if 0 <= number <= MAX_SEQUENCE_ID else None


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether JSON-like ``value`` nests more than ``limit`` containers deep (no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend(
                (child, depth + 1) for child in children if isinstance(child, (dict, list))
            )
    return False
