"""Ingest under realistic load: eight OpenTelemetry SDK exporters sending GenAI-shaped batches
at once into the durable SQLite store (``synchronous=FULL``), against upstream's LightningStore
server (``agl store`` 0.3.0, in-memory, its ``/v1/traces``) with the same load in the same run.

Each exporter is the SDK's own ``OTLPSpanExporter`` (OTLP/HTTP protobuf, batches of 512 spans).
Its spans are made by the SDK's ``TracerProvider`` and encoded by the SDK's encoder before the
clock starts, and each export sends a pre-encoded batch through the exporter's HTTP client: on a
small machine, encoding in the timed loop would measure the exporters rather than the servers.
Every export gets fresh trace and span ids (a byte marker in the ids is replaced), so no server
sees a span twice, and later start and end times (the same with the times' upper half), so each
rollout's spans move forward in time as an agent's do. One span in five is a chat call carrying
about 2 KB of messages.

Figures: spans/s at full load (all eight exporters sending back to back), then the latency of a
512-span export at half that rate (paced, each server at half of its own maximum), and the
receiver's peak resident memory against its configured request memory budget.

``BENCH_PREFILL=N`` stores N spans in the receiver's file before it starts (the reads' figure is
then among that many more): written in this process through the store's own write path (decode,
route, a transaction a request, as the receiver commits them, only without syncing to disk) and
their records prepared as the receiver prepares them, as a store that kept up would hold them.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator

from bench.common import agl_store_process, bar_chart, cpu_seconds, load, peak_rss, say
from bench.floor import durable_insert_floor, spans_of
from lightning_otlp.defaults import DEFAULT_MAX_REQUEST_MEMORY
from lightning_otlp.receiver.decode import PROTOBUF as PROTOBUF_MEDIA
from lightning_otlp.receiver.pipeline import Pipeline
from lightning_otlp.store import SQLiteStore, views
from tests.payloads import genai_request
from tests.support import ReceiverProcess

SECONDS = float(os.environ.get("BENCH_SECONDS", "30"))
EXPORTERS = int(os.environ.get("BENCH_EXPORTERS", "8"))
PREFILL = int(os.environ.get("BENCH_PREFILL", "0"))
BATCH = 512
# Distinct pre-encoded batches each exporter cycles through (one rollout each).
TEMPLATES = 4
CHAT_EVERY = 5
# The trainer's read at half load: a rollout of this many spans, read this long after it ends.
READ_SPANS = 500
READ_AFTER = 1.0
# A 4-byte marker at the front of every trace and span id, replaced per export.
_MARKER = b"\xfe\xed\xfa\xce"
# The upper 32 bits of every span's start and end time (ns, little-endian on the wire), replaced
# per export by a later value; the lower 32 bits (4.3 s) place the spans within their batch.
_TIME_MARK = 0x19F1E2D3
_TIME_BASE = 0x18000000
_STEP_NS = 10_000
_TIME_BYTES = _TIME_MARK.to_bytes(4, "little")
PROTOBUF = {"content-type": "application/x-protobuf"}
_MESSAGES_IN = json.dumps(
    [
        {
            "role": "system",
            "parts": [{"type": "text", "content": "You are a careful agent. " * 12}],
        },
        {"role": "user", "parts": [{"type": "text", "content": "Plan the next step. " * 50}]},
    ]
)
_MESSAGES_OUT = json.dumps(
    [{"role": "assistant", "parts": [{"type": "text", "content": "Calling search. " * 22}]}]
)


class _MarkedIds(IdGenerator):
    """Ids that start with ``_MARKER``, so each export can make them new with one replace."""

    def __init__(self) -> None:
        self._spans = itertools.count(1)
        self._traces = itertools.count(1)

    def generate_span_id(self) -> int:
        return int.from_bytes(_MARKER + next(self._spans).to_bytes(4, "big"), "big")

    def generate_trace_id(self) -> int:
        return int.from_bytes(_MARKER + bytes(8) + next(self._traces).to_bytes(4, "big"), "big")


class _Keep(SpanProcessor):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


def agent_batch(provider: TracerProvider, keep: _Keep, rollout: tuple[str, str]) -> bytes:
    """512 spans of one rollout's agent steps (an agent span, chat calls, tool calls), encoded
    by the SDK's encoder as its HTTP exporter sends them."""
    tracer = provider.get_tracer("bench.agent", "1.0")
    ids = {"agentlightning.rollout_id": rollout[0], "agentlightning.attempt_id": rollout[1]}
    clock = (_TIME_MARK << 32 | n * _STEP_NS for n in itertools.count(1))
    keep.spans.clear()
    while len(keep.spans) < BATCH:
        agent = tracer.start_span("invoke_agent planner", attributes=ids, start_time=next(clock))
        with trace.use_span(agent, end_on_exit=False):
            for step in range(9):
                if len(keep.spans) + step >= BATCH - 1:
                    break
                if step % CHAT_EVERY == 0:
                    attrs = {
                        **ids,
                        "gen_ai.operation.name": "chat",
                        "gen_ai.system": "openai",
                        "gen_ai.request.model": "gpt-4o-mini",
                        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
                        "gen_ai.usage.input_tokens": 812,
                        "gen_ai.usage.output_tokens": 164,
                        "gen_ai.response.finish_reasons": ("stop",),
                        "gen_ai.input.messages": _MESSAGES_IN,
                        "gen_ai.output.messages": _MESSAGES_OUT,
                    }
                    call = tracer.start_span(
                        "chat gpt-4o-mini", attributes=attrs, start_time=next(clock)
                    )
                    call.end(next(clock))
                else:
                    attrs = {
                        **ids,
                        "gen_ai.operation.name": "execute_tool",
                        "gen_ai.tool.name": "search",
                        "gen_ai.tool.call.id": f"call_{step}",
                    }
                    tool = tracer.start_span(
                        "execute_tool search", attributes=attrs, start_time=next(clock)
                    )
                    tool.end(next(clock))
        agent.end(next(clock))
    spans = keep.spans[:BATCH]
    return bytes(encode_spans(spans).SerializePartialToString())


def make_templates(rollouts: Sequence[tuple[str, str]]) -> list[list[bytes]]:
    """Per exporter, ``TEMPLATES`` encoded batches, each of its own rollout."""
    out = []
    ids = _MarkedIds()
    for e in range(EXPORTERS):
        keep = _Keep()
        provider = TracerProvider(
            resource=Resource.create({"service.name": f"agent-{e}"}), id_generator=ids
        )
        provider.add_span_processor(keep)
        out.append(
            [agent_batch(provider, keep, rollouts[e * TEMPLATES + k]) for k in range(TEMPLATES)]
        )
        provider.shutdown()
    return out


@dataclass
class Load:
    label: str
    spans: int = 0
    failed: int = 0
    seconds: float = 0.0
    cpu: float = 0.0  # the server's CPU seconds meanwhile
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.spans / self.seconds if self.seconds else 0.0

    def p(self, q: float) -> float:
        lat = sorted(self.latencies)
        return lat[min(len(lat) - 1, int(len(lat) * q))] * 1000 if lat else float("nan")

    def line(self) -> str:
        p50 = statistics.median(self.latencies) * 1000 if self.latencies else float("nan")
        failed = f", {self.failed} failed" if self.failed else ""
        cpu = f", server CPU {self.cpu / self.spans * 1e6:.1f} us/span" if self.spans else ""
        return (
            f"{self.label:<44} {self.rate:>9,.0f} spans/s  p50 {p50:6.1f} ms"
            f"  p99 {self.p(0.99):6.1f} ms  ({len(self.latencies)} exports{failed}{cpu}; {load()})"
        )


def prefill(path: Path, spans: int) -> None:
    """Store ``spans`` spans in a new store at ``path`` and prepare their records (see the
    module's docstring): 512-span agent batches, a rollout each, fresh ids in each."""
    # A rollout and attempt id of the same length as those put in their place.
    rollout = (f"ro-{0xFEEDFACE0000:012x}", f"at-{0xFEEDFACE:08x}")
    provider = TracerProvider(id_generator=_MarkedIds())
    keep = _Keep()
    provider.add_span_processor(keep)
    template = agent_batch(provider, keep, rollout)
    provider.shutdown()
    store = SQLiteStore(str(path), synchronous="OFF")
    store.open()
    pipeline = Pipeline(store)
    started = time.perf_counter()
    try:
        for n in range(-(-spans // BATCH)):
            body = template.replace(_MARKER, (0xA0 << 24 | n).to_bytes(4, "big"))
            body = body.replace(rollout[0].encode(), f"ro-{n:012x}".encode())
            body = body.replace(rollout[1].encode(), f"at-{n:08x}".encode())
            pipeline.export_traces(body, None, PROTOBUF_MEDIA, "http")
        written = time.perf_counter() - started
        time.sleep(views.INGEST_SECONDS)  # as the receiver does once ingest pauses
        while store.idle_work():
            pass
    finally:
        pipeline.close()
        store.close()
    say(
        f"prefilled {spans:,} spans: written in {written:.0f} s, their records prepared in"
        f" {time.perf_counter() - started - written:.0f} s"
    )


def drive(
    label: str,
    endpoints: Sequence[str],
    templates: list[list[bytes]],
    rate: float | None,
    cpu: Callable[[], float],
) -> Load:
    """All exporters at once for ``SECONDS``: back to back, or paced to ``rate`` spans/s (for
    half as long); exporter ``i`` sends to ``endpoints[i % len(endpoints)]``; ``cpu`` says the
    CPU seconds the servers have used so far."""
    result = Load(label)
    cpu_before = cpu()
    lock = threading.Lock()
    started = time.perf_counter()
    deadline = started + (SECONDS if rate is None else SECONDS / 2)
    interval = EXPORTERS * BATCH / rate if rate else 0.0

    def run(index: int) -> None:
        exporter = OTLPSpanExporter(endpoint=endpoints[index % len(endpoints)], timeout=60)
        client = exporter._client  # the exporter's own HTTP client, retries and all
        batches = templates[index]
        next_at = started + interval * index / EXPORTERS
        latencies: list[float] = []
        sent = failed = 0
        for n in itertools.count():
            if interval:
                pause = next_at - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                next_at += interval
            if time.perf_counter() >= deadline:
                break
            marker = ((index + 1) << 24 | n).to_bytes(4, "big")
            later = (_TIME_BASE + n * EXPORTERS + index).to_bytes(4, "little")
            body = batches[n % TEMPLATES].replace(_MARKER, marker).replace(_TIME_BYTES, later)
            t0 = time.perf_counter()
            ok = client.export(body).success
            latencies.append(time.perf_counter() - t0)
            if ok:
                sent += BATCH
            else:
                failed += 1
        exporter.shutdown()
        with lock:
            result.latencies.extend(latencies)
            result.spans += sent
            result.failed += failed

    threads = [threading.Thread(target=run, args=(i,)) for i in range(EXPORTERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.seconds = time.perf_counter() - started
    result.cpu = cpu() - cpu_before
    say(result.line())
    return result


class Trainer(threading.Thread):
    """Reads each rollout right after it finishes, as a trainer does: sends one rollout of
    ``READ_SPANS`` spans, waits ``READ_AFTER`` s, then times ``query_spans`` of it through the
    LightningStore API (the whole answer received and checked)."""

    def __init__(self, receiver: ReceiverProcess) -> None:
        super().__init__()
        self.receiver = receiver
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.waiting: list[int] = []  # newest spans without a prepared record, at each read

    def run(self) -> None:
        url = self.receiver.http_url
        with httpx.Client(timeout=60) as client:
            for n in itertools.count():
                if self.stop.is_set():
                    return
                ids = [(f"ro-feed{n:08x}", f"at-{n:08x}")]
                body = genai_request(READ_SPANS, ids=ids, seed=n).SerializeToString()
                client.post(url + "/v1/traces", content=body, headers=PROTOBUF).raise_for_status()
                if self.stop.wait(READ_AFTER):
                    return
                self.waiting.append(views_behind(self.receiver, "_newest"))
                t0 = time.perf_counter()
                answer = client.post(url + "/v1/agl/spans/search", json={"rollout_id": ids[0][0]})
                elapsed = time.perf_counter() - t0
                answer.raise_for_status()
                if len(answer.json()["items"]) != READ_SPANS:
                    raise RuntimeError(f"query_spans of {ids[0][0]}: {answer.text[:200]}")
                self.latencies.append(elapsed)


def views_behind(receiver: ReceiverProcess, which: str = "") -> int:
    """Spans whose records are not yet prepared for reads (the receiver's own metric; of the
    newest spans with ``which="_newest"``)."""
    text = httpx.get(receiver.health_url + "/metrics", timeout=30).text
    for line in text.splitlines():
        if line.startswith(f"lightning_otlp_span_views{which}_behind "):
            return int(float(line.split()[1]))
    return -1


def settle(base: str) -> None:
    """Wait for a server to work off what the full load left queued: a small request answered
    fast, three times in a row (at most 60 s)."""
    quick = 0
    deadline = time.monotonic() + 60
    with httpx.Client(timeout=60) as client:
        while quick < 3 and time.monotonic() < deadline:
            t0 = time.perf_counter()
            client.post(base + "/v1/traces", content=b"", headers=PROTOBUF)
            quick = quick + 1 if time.perf_counter() - t0 < 0.05 else 0
            time.sleep(0.2)


def create_rollouts(base: str, count: int) -> list[tuple[str, str]]:
    """Rollouts in upstream's store (it takes spans of rollouts it knows only)."""
    out = []
    with httpx.Client(timeout=60) as client:
        for _ in range(count):
            r = client.post(base + "/v1/agl/rollouts", json={"input": {"task": "bench"}})
            r.raise_for_status()
            out.append((r.json()["rollout_id"], r.json()["attempt"]["attempt_id"]))
    return out


def main() -> None:
    say(
        f"{EXPORTERS} OTel SDK OTLP/HTTP exporters, {BATCH} spans an export, 1 in {CHAT_EVERY}"
        f" a chat call with ~2 KB of messages; {SECONDS:.0f} s full load,"
        f" {SECONDS / 2:.0f} s at half load"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        with agl_store_process(tmpdir / "agl.log") as (base, agl):
            rollouts = create_rollouts(base, EXPORTERS * TEMPLATES)
            templates = make_templates(rollouts)
            size = sum(len(b) for t in templates for b in t) / (EXPORTERS * TEMPLATES * BATCH)
            say(f"payload: {size:.0f} bytes a span on the wire")
            agl_cpu = functools.partial(cpu_seconds, agl.pid)
            upstream = drive(
                "agl store 0.3.0  -> memory", [base + "/v1/traces"], templates, None, agl_cpu
            )
            settle(base)
            upstream_half = drive(
                "agl store 0.3.0  at half load",
                [base + "/v1/traces"],
                templates,
                upstream.rate / 2,
                agl_cpu,
            )
            upstream_rss = peak_rss(agl.pid)
        if PREFILL:
            prefill(tmpdir / "bench.db", PREFILL)
        receiver = ReceiverProcess(tmpdir / "bench.db").start()  # synchronous=FULL by default
        try:
            assert receiver.proc is not None
            ours_cpu = functools.partial(cpu_seconds, receiver.proc.pid)
            url = [receiver.traces_url]
            full = drive("lightning-otlp  -> SQLite, FULL sync", url, templates, None, ours_cpu)
            settle(receiver.http_url)
            behind_before = views_behind(receiver)
            trainer = Trainer(receiver)
            trainer.start()
            try:
                half = drive(
                    "lightning-otlp  at half load", url, templates, full.rate / 2, ours_cpu
                )
            finally:
                trainer.stop.set()
                trainer.join()
            behind_after = views_behind(receiver)
            stored = PREFILL + full.spans + half.spans
            rss = peak_rss(receiver.proc.pid)
        finally:
            receiver.stop()
    ratio = full.rate / upstream.rate if upstream.rate else float("inf")
    say(f"ratio: ingest {ratio:.1f}x agl store 0.3.0 (aim: >= 10x)")
    # What no receiver here can beat: the same spans inserted with nothing else to do.
    floor = durable_insert_floor(spans_of([b for t in templates for b in t]))
    say(
        f"floor: the same spans as rows built beforehand, inserted with the store's schema and"
        f" FULL sync (no HTTP, decoding, routing or records): {floor.rows_per_second:,.0f} rows/s"
        f" ({floor.cpu_us_per_row:.1f} us CPU a row) = {floor.rows_per_second / upstream.rate:.1f}x"
        f" agl store; lightning-otlp ingests at {full.rate / floor.rows_per_second:.0%} of it"
    )
    say(
        f"p99 of a {BATCH}-span export at half load: {half.p(0.99):.1f} ms"
        f" (agl store: {upstream_half.p(0.99):.1f} ms; aim: < 20 ms)"
    )
    reads = Load("query_spans", latencies=trainer.latencies)
    say(
        f"query_spans of a {READ_SPANS}-span rollout {READ_AFTER:.0f} s after it was sent, at"
        f" half load, among about {stored:,} stored spans: p50 {reads.p(0.5):.1f} ms,"
        f" p99 {reads.p(0.99):.1f} ms ({len(reads.latencies)} reads; aim: p99 < 20 ms)"
    )
    say(
        f"records prepared for reads: {behind_before:,} spans behind as half load began,"
        f" {behind_after:,} as it ended ({half.spans:,} spans arrived meanwhile); of the newest"
        f" spans, prepared first, {max(trainer.waiting, default=0):,} at most still waited as"
        f" the trainer read (mean {statistics.fmean(trainer.waiting or [0]):,.0f})"
    )
    mib = 1024 * 1024
    say(
        f"peak RSS: lightning-otlp {rss / mib:.0f} MiB (request memory budget"
        f" {DEFAULT_MAX_REQUEST_MEMORY / mib:.0f} MiB, sized for a 512 MiB container);"
        f" agl store {upstream_rss / mib:.0f} MiB"
    )
    note = f"{EXPORTERS} exporters x {BATCH} spans; {load()}"
    bar_chart(
        "ingest-throughput",
        "Ingest, 8 concurrent OTel SDK exporters (spans/s, higher is better)",
        "spans/s",
        {
            "lightning-otlp (SQLite, FULL sync)": full.rate,
            "agl store 0.3.0 (memory)": upstream.rate,
        },
        note,
    )
    bar_chart(
        "ingest-latency",
        f"p99 of a {BATCH}-span export at half load (ms, lower is better)",
        "ms",
        {"lightning-otlp": half.p(0.99), "agl store 0.3.0": upstream_half.p(0.99)},
        note,
    )
    bar_chart(
        "reads-under-ingest",
        f"query_spans of a {READ_SPANS}-span rollout {READ_AFTER:.0f} s after it was sent,"
        " at half load (ms)",
        "ms",
        {"lightning-otlp p50": reads.p(0.5), "lightning-otlp p99": reads.p(0.99)},
        note,
    )
    bar_chart(
        "ingest-memory",
        "Peak resident memory during the ingest benchmark (MiB)",
        "MiB",
        {
            "lightning-otlp": rss / mib,
            "lightning-otlp request budget": DEFAULT_MAX_REQUEST_MEMORY / mib,
            "agl store 0.3.0": upstream_rss / mib,
        },
        note,
    )
