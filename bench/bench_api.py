"""The LightningStore API: lightning-otlp (durable SQLite) against ``agl store`` 0.3.0 (in-memory).

1. ``query_spans`` of one rollout (500 spans) with many spans stored: p50/p99 through the API,
   with records built when read (``--prepare-reads false``) and prepared while idle (default).
2. Rollout search with a status filter over many rollouts: p50/p99.
3. enqueue + dequeue + add_span + update_attempt round trips through agentlightning's own
   ``LightningStoreClient``: cycles a second, and the ratio to upstream.

Sizes: ``BENCH_API_SPANS`` (1,000,000 for lightning-otlp; upstream keeps every span in memory,
so it gets ``BENCH_API_AGL_SPANS``, 200,000 by default), ``BENCH_API_ROLLOUTS`` (100,000) and
``BENCH_API_CYCLES`` (200).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from bench.common import AGL_PYTHON, agl_store, say
from lightning_otlp.receiver.decode import PROTOBUF
from lightning_otlp.receiver.pipeline import Pipeline
from lightning_otlp.store import SQLiteStore
from tests.payloads import genai_request
from tests.support import ReceiverProcess

SPANS = int(os.environ.get("BENCH_API_SPANS", "1000000"))
AGL_SPANS = int(os.environ.get("BENCH_API_AGL_SPANS", "200000"))
ROLLOUTS = int(os.environ.get("BENCH_API_ROLLOUTS", "100000"))
CYCLES = int(os.environ.get("BENCH_API_CYCLES", "200"))
PER_ROLLOUT = 500
QUERIES = 200
HERE = Path(__file__).resolve().parent

ROUND_TRIPS = r"""
import asyncio, json, sys, time
from agentlightning.store.client_server import LightningStoreClient
from agentlightning.types import Span

def span(rollout_id, attempt_id, n):
    return Span.model_validate({
        "rollout_id": rollout_id, "attempt_id": attempt_id, "sequence_id": 1,
        "trace_id": f"{n:032x}", "span_id": f"{n:016x}", "parent_id": None, "name": "llm",
        "status": {"status_code": "OK", "description": None}, "attributes": {"n": n},
        "events": [], "links": [], "start_time": 1.0, "end_time": 2.0, "context": None,
        "parent": None, "resource": {"attributes": {}, "schema_url": ""}})

async def main(url, cycles):
    client = LightningStoreClient(url)
    await client.add_resources({})
    started = time.perf_counter()
    for n in range(cycles):
        await client.enqueue_rollout({"n": n})
        rollout = await client.dequeue_rollout(worker_id="bench")
        attempt_id = rollout.attempt.attempt_id
        await client.add_span(span(rollout.rollout_id, attempt_id, n + 1))
        await client.update_attempt(rollout.rollout_id, attempt_id, status="succeeded")
    elapsed = time.perf_counter() - started
    await client.close()
    return elapsed

out = {url: asyncio.run(main(url, int(sys.argv[1]))) for url in sys.argv[2:]}
print(json.dumps(out))
"""


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    return f"p50 {p50:7.2f} ms   p99 {p99:7.2f} ms"


def timed_calls(call: Callable[[int], None], n: int) -> list[float]:
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        call(i)
        samples.append(time.perf_counter() - t0)
    return samples


def fill_sqlite(path: Path, spans: int) -> list[str]:
    """Spans written through the receiver's own OTLP path, in process: the same rows as a
    running receiver stores, without timing HTTP for the load."""
    store = SQLiteStore(str(path), synchronous="OFF")
    store.open()
    pipeline = Pipeline(store)
    rollouts = []
    try:
        for r in range(spans // PER_ROLLOUT):
            ids = [(f"ro-{r:012x}", f"at-{r:08x}")]
            request = genai_request(PER_ROLLOUT, ids=ids, seed=r)
            pipeline.export_traces(request.SerializeToString(), None, PROTOBUF, "http")
            rollouts.append(ids[0][0])
    finally:
        pipeline.close()
        store.close()
    return rollouts


def fill_agl(client: httpx.Client, base: str, spans: int) -> list[str]:
    rollouts = []
    for r in range(spans // PER_ROLLOUT):
        created = client.post(base + "/v1/agl/rollouts", json={"input": {"r": r}}).json()
        ids = [(created["rollout_id"], created["attempt"]["attempt_id"])]
        body = genai_request(PER_ROLLOUT, ids=ids, seed=r).SerializeToString()
        answer = client.post(base + "/v1/traces", content=body, headers={"content-type": PROTOBUF})
        answer.raise_for_status()
        rollouts.append(created["rollout_id"])
    return rollouts


def query_spans(client: httpx.Client, base: str, rollouts: list[str]) -> list[float]:
    """Until the whole answer is received; the client's own JSON parsing (the same for both
    stores, and a larger share than the server's work) is left out of the time."""
    step = max(1, len(rollouts) // QUERIES)
    samples = []
    for i in range(QUERIES + 1):
        rollout_id = rollouts[(i * step) % len(rollouts)]
        t0 = time.perf_counter()
        body = client.post(base + "/v1/agl/spans/search", json={"rollout_id": rollout_id}).content
        if i:  # the first one warms up
            samples.append(time.perf_counter() - t0)
        page = json.loads(body)
        assert len(page["items"]) == PER_ROLLOUT, page.get("total")
    return samples


def wait_prepared(receiver: ReceiverProcess) -> None:
    """Until the receiver's background step has prepared every span's record for reads."""
    while True:
        text = httpx.get(receiver.health_url + "/metrics", timeout=30).text
        behind = next(
            line.split()[1]
            for line in text.splitlines()
            if line.startswith("lightning_otlp_span_views_behind ")
        )
        if float(behind) == 0:
            return
        time.sleep(1)


def fill_rollouts(client: httpx.Client, base: str, count: int) -> None:
    for start in range(0, count, 1000):
        batch = [{"input": {"n": n}} for n in range(start, min(count, start + 1000))]
        answer = client.post(base + "/v1/agl/queues/rollouts/enqueue", json={"rollouts": batch})
        answer.raise_for_status()
    # some rollouts in another state, so the filter has something to find
    client.post(base + "/v1/agl/queues/rollouts/dequeue", json={"limit": 100, "worker_id": "w"})


def search_rollouts(client: httpx.Client, base: str) -> list[float]:
    def one(i: int) -> None:
        status = ["preparing", "queuing"][i % 2]
        body = {"status_in": [status], "limit": 50, "offset": 0}
        page = client.post(base + "/v1/agl/rollouts/search", json=body).json()
        assert page["items"], page

    one(0)
    return timed_calls(one, QUERIES)


def round_trips(*urls: str) -> dict[str, float]:
    done = subprocess.run(
        [AGL_PYTHON, "-c", ROUND_TRIPS, str(CYCLES), *urls],
        capture_output=True,
        text=True,
        timeout=3600,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        check=True,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        say(f"loading {SPANS:,} spans ({PER_ROLLOUT} a rollout) into lightning-otlp's SQLite")
        t0 = time.perf_counter()
        ours_rollouts = fill_sqlite(tmpdir / "spans.db", SPANS)
        say(f"  loaded in {time.perf_counter() - t0:.0f} s")
        lines: list[str] = []
        cold = ReceiverProcess(tmpdir / "spans.db", "--prepare-reads", "false").start()
        try:
            with httpx.Client(timeout=300) as client:
                samples = query_spans(client, cold.http_url, ours_rollouts)
            lines.append(
                f"query_spans, 1 rollout of {PER_ROLLOUT} among {SPANS:,}"
                f"   built when read {percentiles(samples)}"
            )
            say(lines[-1])
        finally:
            cold.stop()
        spans_receiver = ReceiverProcess(tmpdir / "spans.db").start()
        t0 = time.perf_counter()
        wait_prepared(spans_receiver)
        seconds = time.perf_counter() - t0
        say(f"  every span's record prepared in the background in {seconds:.0f} s")
        rollouts_receiver = ReceiverProcess(tmpdir / "rollouts.db").start()
        durable_fast = ReceiverProcess(tmpdir / "normal.db")
        durable_fast.store_url += "?synchronous=normal"
        durable_fast.start()
        try:
            run_all(lines, spans_receiver, rollouts_receiver, durable_fast, ours_rollouts, tmpdir)
        finally:
            for receiver in (spans_receiver, rollouts_receiver, durable_fast):
                receiver.stop()


def run_all(
    lines: list[str],
    spans_receiver: ReceiverProcess,
    rollouts_receiver: ReceiverProcess,
    durable_fast: ReceiverProcess,
    ours_rollouts: list[str],
    tmpdir: Path,
) -> None:
    with agl_store(tmpdir / "agl.log") as agl, httpx.Client(timeout=300) as client:
        ours = query_spans(client, spans_receiver.http_url, ours_rollouts)
        lines.append(
            f"query_spans, 1 rollout of {PER_ROLLOUT} among {SPANS:,}"
            f"   prepared        {percentiles(ours)}"
        )
        say(lines[-1])
        say(f"loading {AGL_SPANS:,} spans into agl store (in memory)")
        agl_rollouts = fill_agl(client, agl, AGL_SPANS)
        theirs = query_spans(client, agl, agl_rollouts)
        lines.append(
            f"query_spans, 1 rollout of {PER_ROLLOUT} among {AGL_SPANS:,}"
            f"   agl store       {percentiles(theirs)}"
        )
        say(lines[-1])

        say(f"enqueueing {ROLLOUTS:,} rollouts into each")
        fill_rollouts(client, rollouts_receiver.http_url, ROLLOUTS)
        fill_rollouts(client, agl, ROLLOUTS)
        for label, base in (("lightning-otlp", rollouts_receiver.http_url), ("agl store", agl)):
            lines.append(
                f"rollout search by status among {ROLLOUTS:,}   {label:<15} "
                + percentiles(search_rollouts(client, base))
            )
            say(lines[-1])

        say(f"{CYCLES} enqueue+dequeue+add_span+update_attempt cycles, LightningStoreClient")
        urls = [spans_receiver.http_url, durable_fast.http_url, agl]
        seconds = round_trips(*urls)
        upstream = CYCLES / seconds[agl]
        for label, url in (
            ("lightning-otlp (synchronous=FULL)", spans_receiver.http_url),
            ("lightning-otlp (synchronous=NORMAL)", durable_fast.http_url),
            ("agl store (in memory)", agl),
        ):
            rate = CYCLES / seconds[url]
            say(f"  {label:<36} {rate:8.1f} cycles/s   {rate / upstream:5.2f}x upstream")


if __name__ == "__main__":
    main()
