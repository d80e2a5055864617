"""Decoding: spec JSON, protobuf and compression limits, fuzzed for clean errors only."""

from __future__ import annotations

import base64
import gzip
import json
import tracemalloc
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest as PB2ExportTraceServiceRequest,
)

from lightning_otlp.errors import InvalidRequest, PayloadTooLarge
from lightning_otlp.receiver.decode import (
    JSON,
    PROTOBUF,
    decode_json,
    decode_traces,
    decompress,
    encode,
    media_type,
)

TRACE_HEX = "5b8efff798038103d269b633813fc60c"
SPAN_HEX = "eee19b7ec3c1b174"
PARENT_HEX = "eee19b7ec3c1b173"


def spec_json(**span_overrides: object) -> dict:
    span = {
        "traceId": TRACE_HEX,
        "spanId": SPAN_HEX,
        "parentSpanId": PARENT_HEX,
        "name": "chat",
        "kind": 3,
        "startTimeUnixNano": "1544712660000000000",
        "endTimeUnixNano": 1544712661000000000,
        "attributes": [
            {"key": "s", "value": {"stringValue": "x"}},
            {"key": "i", "value": {"intValue": "42"}},
            {"key": "b", "value": {"bytesValue": base64.b64encode(b"\x01\x02").decode()}},
        ],
        "status": {"code": "STATUS_CODE_ERROR", "message": "boom"},
        "links": [{"traceId": TRACE_HEX, "spanId": PARENT_HEX}],
        "someFutureField": {"ignored": True},
    }
    span.update(span_overrides)
    return {"resourceSpans": [{"resource": {}, "scopeSpans": [{"spans": [span]}]}]}


def test_json_ids_are_hex_not_base64() -> None:
    request = decode_json(json.dumps(spec_json()).encode(), PB2ExportTraceServiceRequest)
    span = request.resource_spans[0].scope_spans[0].spans[0]
    assert span.trace_id.hex() == TRACE_HEX
    assert span.span_id.hex() == SPAN_HEX
    assert span.parent_span_id.hex() == PARENT_HEX
    assert span.links[0].span_id.hex() == PARENT_HEX
    assert span.start_time_unix_nano == 1544712660000000000
    assert span.end_time_unix_nano == 1544712661000000000
    assert span.status.code == 2
    assert span.attributes[1].value.int_value == 42
    assert span.attributes[2].value.bytes_value == b"\x01\x02"


def test_json_accepts_snake_case_and_enum_numbers() -> None:
    doc = {
        "resource_spans": [
            {
                "scope_spans": [
                    {
                        "spans": [
                            {
                                "trace_id": TRACE_HEX,
                                "span_id": SPAN_HEX,
                                "parent_span_id": "",
                                "name": "x",
                                "status": {"code": 1},
                                "start_time_unix_nano": 5,
                            }
                        ]
                    }
                ]
            }
        ]
    }
    span = decode_traces(json.dumps(doc).encode(), JSON).resource_spans[0].scope_spans[0].spans[0]
    assert (span.trace_id.hex(), span.parent_span_id, span.status.code) == (TRACE_HEX, b"", 1)


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        json.dumps(spec_json(traceId="abc")).encode(),
        json.dumps(spec_json(spanId="zz" * 8)).encode(),
        json.dumps(spec_json(kind={"not": "an enum"})).encode(),
        json.dumps(spec_json(startTimeUnixNano="soon")).encode(),
        b"\xff\xfe",
    ],
)
def test_bad_json_is_invalid_request(body: bytes) -> None:
    with pytest.raises(InvalidRequest):
        decode_traces(body, JSON)


@pytest.mark.parametrize("body", [b"\x0a\xff\xff\xff\xff\x0f", b"\x0a\x10\x0a", b"\x0f\x00"])
def test_bad_protobuf_is_invalid_request(body: bytes) -> None:
    with pytest.raises(InvalidRequest):
        decode_traces(body, PROTOBUF)


def test_gzip_and_deflate_round_trip() -> None:
    data = b"x" * 10_000
    assert decompress(gzip.compress(data), "gzip", 20_000) == data
    assert decompress(gzip.compress(data[:10]) + gzip.compress(data[10:]), "GZIP", 20_000) == data
    assert decompress(zlib.compress(data), "deflate", 20_000) == data
    assert decompress(data, "identity", 20_000) == data


@pytest.mark.parametrize(
    ("body", "encoding"),
    [(b"not gzip", "gzip"), (gzip.compress(b"x" * 1000, mtime=0)[:-12], "gzip"), (b"x", "br")],
)
def test_bad_encodings_are_invalid_request(body: bytes, encoding: str) -> None:
    with pytest.raises(InvalidRequest):
        decompress(body, encoding, 10_000)


@pytest.mark.slow
def test_gzip_bomb_is_never_inflated_past_the_limit() -> None:
    limit = 1 << 20
    inflater = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    bomb = b"".join(inflater.compress(chunk) for _ in range(1024)) + inflater.flush()
    assert len(bomb) < 2 << 20  # 1 GiB of zeros in about a megabyte
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge):
            decompress(bomb, "gzip", limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * limit


def test_plain_body_over_the_limit() -> None:
    with pytest.raises(PayloadTooLarge):
        decompress(b"x" * 101, None, 100)


def test_media_type_ignores_parameters() -> None:
    assert media_type("Application/JSON; charset=utf-8") == JSON
    assert media_type(None) == ""


def test_responses_encode_as_requested() -> None:
    request = decode_json(json.dumps(spec_json()).encode(), PB2ExportTraceServiceRequest)
    assert PB2ExportTraceServiceRequest.FromString(encode(request, PROTOBUF)) == request
    assert json.loads(encode(request, JSON))["resourceSpans"]


@settings(max_examples=300, deadline=None)
@pytest.mark.slow
@given(st.binary(max_size=2048), st.sampled_from([PROTOBUF, JSON]))
def test_fuzz_decoders_raise_only_invalid_request(data: bytes, media: str) -> None:
    try:
        decode_traces(data, media)
    except InvalidRequest:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@pytest.mark.slow
@given(json_values)
def test_fuzz_json_documents_raise_only_invalid_request(doc: object) -> None:
    wrapped = {"resourceSpans": [{"scopeSpans": [{"spans": [doc]}]}]}
    for candidate in (doc, wrapped):
        try:
            decode_traces(json.dumps(candidate).encode(), JSON)
        except InvalidRequest:
            pass


class _CountingInflater:
    """A zlib decompressor that counts the input bytes it is handed."""

    fed = 0

    def __init__(self, wbits: int) -> None:
        self._inner = _real_decompressobj(wbits)

    def decompress(self, data: bytes, max_length: int = 0) -> bytes:
        _CountingInflater.fed += len(data)
        return self._inner.decompress(data, max_length)

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


_real_decompressobj = zlib.decompressobj


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_many_members_inflate_in_linear_work(
    monkeypatch: pytest.MonkeyPatch, encoding: str
) -> None:
    """Each member used to be handed all the input after it: quadratic in the body's size."""
    compress = gzip.compress if encoding == "gzip" else zlib.compress
    body = compress(b"") * 1000 + compress(b"payload")
    monkeypatch.setattr(zlib, "decompressobj", _CountingInflater)
    _CountingInflater.fed = 0
    assert decompress(body, encoding, 1 << 20) == b"payload"
    # Quadratic handed each member all that followed: 500 times the body here.
    assert _CountingInflater.fed <= 10 * len(body)


def test_too_many_members_is_invalid_request_before_inflating_them() -> None:
    from lightning_otlp.receiver.decode import MAX_MEMBERS

    body = gzip.compress(b"") * (4 * MAX_MEMBERS)
    with pytest.raises(InvalidRequest, match="members"):
        decompress(body, "gzip", 1 << 20)


# -- decode work is bounded by what a request holds, not only by its bytes -------------------


def _empty_spans_request(count: int) -> bytes:
    """One ResourceSpans, one ScopeSpans, ``count`` empty spans: two bytes a span."""
    from google.protobuf.internal.encoder import _VarintBytes

    spans = b"\x12\x00" * count
    scope = b"\x12" + _VarintBytes(len(spans)) + spans
    return b"\x0a" + _VarintBytes(len(scope)) + scope


@pytest.mark.slow
def test_a_flood_of_empty_spans_is_refused_before_it_is_decoded() -> None:
    from lightning_otlp.receiver.decode import MAX_REQUEST_ELEMENTS

    body = _empty_spans_request(MAX_REQUEST_ELEMENTS + 1)
    with pytest.raises(PayloadTooLarge, match="spans"):
        decode_traces(body, PROTOBUF)
    # Up to the limit, they decode (and routing rejects each for its missing ids).
    request = decode_traces(_empty_spans_request(1000), PROTOBUF)
    assert len(request.resource_spans[0].scope_spans[0].spans) == 1000


@pytest.mark.slow
def test_a_flood_of_empty_resource_spans_is_refused() -> None:
    from lightning_otlp.receiver.decode import MAX_REQUEST_ELEMENTS

    with pytest.raises(PayloadTooLarge):
        decode_traces(b"\x0a\x00" * (MAX_REQUEST_ELEMENTS + 1), PROTOBUF)


@pytest.mark.slow
def test_a_flood_of_json_objects_is_refused_before_parsing() -> None:
    from lightning_otlp.receiver.decode import MAX_REQUEST_ELEMENTS

    spans = ",".join(["{}"] * (MAX_REQUEST_ELEMENTS + 1))
    body = ('{"resourceSpans":[{"scopeSpans":[{"spans":[' + spans + "]}]}]}").encode()
    with pytest.raises(PayloadTooLarge):
        decode_traces(body, JSON)


@pytest.mark.slow
@pytest.mark.parametrize("depth", [5_000, 100_000])
def test_json_nested_too_deep_is_invalid_request(depth: int) -> None:
    with pytest.raises(InvalidRequest, match="deep"):
        decode_traces(b"[" * depth + b"]" * depth, JSON)
    body = b'{"resourceSpans":' + b'{"a":' * depth + b"1" + b"}" * depth + b"}"
    with pytest.raises(InvalidRequest, match="deep"):
        decode_traces(body, JSON)


def test_span_count_refuses_group_fields_that_would_hide_spans() -> None:
    # A group (wire type 3, field 15) in a ScopeSpans: protobuf would skip it; OTLP has none.
    from google.protobuf.internal.encoder import _VarintBytes

    from lightning_otlp.receiver.decode import count_spans

    scope = b"\x7b\x7c" + b"\x12\x00" * 10
    body = b"\x0a" + _VarintBytes(len(scope) + 2) + b"\x12" + _VarintBytes(len(scope)) + scope
    with pytest.raises(InvalidRequest):
        count_spans(body, 1000)
    assert count_spans(_empty_spans_request(10), 1000) == 12
    assert count_spans(genai_request_bytes(), 1000) == 7


def test_span_count_matches_the_decoder_on_mixed_spans() -> None:
    """Tiny spans, spans longer than 127 bytes (the two fast paths), one past 16 KiB (three
    length bytes) and a scope and schema URL between them: the count from the wire is the
    decoder's."""
    from lightning_otlp.receiver.decode import count_spans

    from .payloads import make_request, make_span

    request = make_request(
        [make_span(f"s{i}", attributes={"pad": "x" * (i * 13)}) for i in range(40)]
        + [make_span("big", attributes={"pad": "x" * 20_000})]
    )
    scope = request.resource_spans[0].scope_spans[0]
    scope.spans.add()  # empty: two bytes
    scope.schema_url = "https://example.com/schema"
    request.resource_spans.add().scope_spans.add().spans.add()
    body = request.SerializeToString()
    decoded = decode_traces(body)
    expected = sum(1 + sum(1 + len(s.spans) for s in r.scope_spans) for r in decoded.resource_spans)
    assert count_spans(body, 10_000) == expected == 47
    assert 5 < count_spans(body, 5) <= 8  # stops a little past the limit


def genai_request_bytes() -> bytes:
    from .payloads import genai_request

    return genai_request(5).SerializeToString()


def _deep_kvlist_request(depth: int) -> bytes:
    """A span with one attribute whose value nests ``depth`` kvlists, a string at the bottom,
    built as bytes: protobuf's own encoder stops at its nesting limit too."""
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue

    from .payloads import make_span

    inner = AnyValue(string_value="leaf").SerializeToString()
    for _ in range(depth):  # AnyValue.kvlist_value -> KeyValueList.values -> KeyValue "k"
        kv = b"\x0a\x01k\x12" + _varint(len(inner)) + inner
        kvlist = b"\x0a" + _varint(len(kv)) + kv
        inner = b"\x32" + _varint(len(kvlist)) + kvlist
    attribute = b"\x0a\x04deep\x12" + _varint(len(inner)) + inner
    span = make_span("deep").SerializeToString() + b"\x4a" + _varint(len(attribute)) + attribute
    scope = b"\x12" + _varint(len(span)) + span
    resource_spans = b"\x12" + _varint(len(scope)) + scope
    return b"\x0a" + _varint(len(resource_spans)) + resource_spans


def _varint(n: int) -> bytes:
    from google.protobuf.internal.encoder import _VarintBytes

    return bytes(_VarintBytes(n))


@pytest.mark.slow
@pytest.mark.parametrize("depth", [40, 2_000, 20_000])
def test_kvlists_nested_past_the_decoders_limit_are_flattened_not_refused(depth: int) -> None:
    from opentelemetry.proto.trace.v1.trace_pb2 import Span as PB2Span

    from lightning_otlp.otlp import attributes

    request = decode_traces(_deep_kvlist_request(depth))
    span = request.resource_spans[0].scope_spans[0].spans[0]
    # The flat attributes are what an unlimited decoder would have made of it ...
    assert attributes(span.attributes) == {"deep" + ".k" * depth: "leaf"}
    # ... and the span as stored reads back with any decoder's default limit.
    assert PB2Span.FromString(span.SerializeToString()).name == "deep"


@pytest.mark.parametrize("depth", [31, 40, 120])
def test_json_kvlists_nested_past_the_parsers_limit_are_flattened_not_refused(depth: int) -> None:
    """OTLP/JSON as the protobuf case above: taken and cut, not a 400 for the whole request."""
    from opentelemetry.proto.trace.v1.trace_pb2 import Span as PB2Span

    from lightning_otlp.otlp import attributes

    value: dict[str, object] = {"stringValue": "leaf"}
    for _ in range(depth):
        value = {"kvlistValue": {"values": [{"key": "k", "value": value}]}}
    span = {"traceId": "ab" * 16, "spanId": "cd" * 8, "name": "deep"}
    span["attributes"] = [{"key": "deep", "value": value}]
    body = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).encode()
    decoded = decode_traces(body, JSON).resource_spans[0].scope_spans[0].spans[0]
    assert attributes(decoded.attributes) == {"deep" + ".k" * depth: "leaf"}
    assert PB2Span.FromString(decoded.SerializeToString()).name == "deep"


@pytest.mark.slow
def test_nesting_past_protobufs_maximum_is_still_a_400() -> None:
    with pytest.raises(InvalidRequest):
        decode_traces(_deep_kvlist_request(30_000))  # 90,000 messages deep
