"""Many receivers, one PostgreSQL: OTLP ingest into 1, 2 and 3 receivers sharing a throwaway
PostgreSQL server, beside one receiver on the embedded SQLite store (``synchronous=FULL``) and
``agl store`` 0.3.0, in the same run; then the LightningStore API's round trips with several
concurrent clients, through two receivers on PostgreSQL against one on SQLite.

Ingest is ``bench_ingest``'s load (concurrent OTel SDK exporters, 512-span GenAI-shaped
batches), the exporters spread over the receivers. On a small machine the receivers, the
database and the clients share the cores, so each part's CPU seconds per span are measured from
``/proc`` (PostgreSQL's server processes, including the connections that ended, through the
postmaster's reaped children), and from them the spans/s one core of each part can carry: the
ceiling of a database server or a receiver where its own CPU is the limit.

Every run checks what it claims: the spans stored equal the spans acknowledged, and no receiver
answered an export with an error.
"""

from __future__ import annotations

import json
import os
import sqlite3
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.bench_ingest import (
    BATCH,
    EXPORTERS,
    SECONDS,
    TEMPLATES,
    Load,
    create_rollouts,
    drive,
    make_templates,
    settle,
)
from bench.common import AGL_PYTHON, agl_store_process, bar_chart, load, peak_rss, say
from tests.fleet import Fleet
from tests.postgres import PostgresServer, query

API_CLIENTS = int(os.environ.get("BENCH_FLEET_CLIENTS", "8"))
API_CYCLES = int(os.environ.get("BENCH_FLEET_CYCLES", "40"))
API_SPANS = 4  # spans a runner adds in each cycle
CALLS = ("enqueue", "dequeue", "spans/next", "add_span", "update_attempt", "query_spans")
_CLK = os.sysconf("SC_CLK_TCK")

# Each client: enqueue a rollout, dequeue one (a runner), add spans to it, each with the next
# sequence id, finish its attempt, then read its spans (a Trainer); every call timed, and sent
# to the receivers in turn.
ROUND_TRIPS = r"""
import asyncio, json, logging, sys, time
from agentlightning.store.client_server import LightningStoreClient
from agentlightning.types import Span

CALLS = {}

class Retried(logging.Handler):
    # The client retries a 5xx (or a lost connection) quietly: count each.
    count = 0
    def emit(self, record):
        if "will be retried" in record.getMessage():
            Retried.count += 1

logging.getLogger().addHandler(Retried())
logging.getLogger().setLevel(logging.INFO)

async def timed(name, call):
    t0 = time.perf_counter()
    out = await call
    CALLS.setdefault(name, []).append(time.perf_counter() - t0)
    return out

def span(rollout_id, attempt_id, seq, n):
    return Span.model_validate({
        "rollout_id": rollout_id, "attempt_id": attempt_id, "sequence_id": seq,
        "trace_id": f"{n:032x}", "span_id": f"{n:016x}", "parent_id": None, "name": "llm",
        "status": {"status_code": "OK", "description": None}, "attributes": {"n": n},
        "events": [], "links": [], "start_time": 1.0, "end_time": 2.0, "context": None,
        "parent": None, "resource": {"attributes": {}, "schema_url": ""}})

async def client(index, urls, cycles, spans):
    clients = [LightningStoreClient(url) for url in urls]
    turn = index
    def next_client():
        nonlocal turn
        turn += 1
        return clients[turn % len(clients)]
    for n in range(cycles):
        await timed("enqueue", next_client().enqueue_rollout({"n": n}))
        rollout = await timed("dequeue", next_client().dequeue_rollout(worker_id=f"w{index}"))
        rid, aid = rollout.rollout_id, rollout.attempt.attempt_id
        for k in range(spans):
            seq = await timed("spans/next", next_client().get_next_span_sequence_id(rid, aid))
            unique = (index * cycles + n) * spans + k + 1
            await timed("add_span", next_client().add_span(span(rid, aid, seq, unique)))
        await timed("update_attempt", next_client().update_attempt(rid, aid, status="succeeded"))
        got = await timed("query_spans", next_client().query_spans(rid))
        if len(got) < spans:
            raise SystemExit(f"query_spans of {rid}: {len(got)} spans, {spans} added")
    for c in clients:
        await c.close()

async def main(clients, cycles, spans, urls):
    await asyncio.gather(*(client(i, urls, cycles, spans) for i in range(clients)))

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]))
print(json.dumps({"calls": CALLS, "retried": Retried.count}))
"""


def _stat(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and all its children, live or ended (the kernel adds a reaped
    child's time to its parent's): PostgreSQL runs a process per connection."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    total = 0
    stack, top = [pid], True
    while stack:
        current = stack.pop()
        fields = _stat(current)
        if fields:
            total += int(fields[11]) + int(fields[12])
            if top:  # ended children of the root; those of live children are theirs to count
                total += int(fields[13]) + int(fields[14])
                top = False
            stack.extend(children.get(current, []))
    return total / _CLK


@dataclass
class Ingest:
    """One ingest run and each part's CPU seconds meanwhile."""

    load: Load
    receivers: int
    receiver_cpu: float
    database_cpu: float
    client_cpu: float
    rss: int
    stored: int
    conflicts: int = 0
    wal: float = 0.0  # bytes of PostgreSQL's write-ahead log meanwhile

    def per_span(self, cpu: float) -> float:
        return cpu / self.load.spans * 1e6 if self.load.spans else float("nan")

    def line(self) -> str:
        return (
            f"  CPU us/span: receivers {self.per_span(self.receiver_cpu):.1f},"
            f" database {self.per_span(self.database_cpu):.1f},"
            f" clients {self.per_span(self.client_cpu):.1f};"
            f" peak RSS a receiver {self.rss / 2**20:.0f} MiB;"
            f" {self.stored:,} spans stored, {self.load.spans:,} acknowledged;"
            f" {self.conflicts} transactions run again after a conflict; {load()}"
        )


def ingest(
    label: str,
    fleet: Fleet,
    templates: list[list[bytes]],
    database_cpu: Callable[[], float],
    stored: Callable[[], int],
) -> Ingest:
    """Full load spread over the fleet's receivers; checks nothing acknowledged was lost and no
    export was answered with an error."""
    pids = [r.proc.pid for r in fleet if r.proc is not None]
    db_before, client_before = database_cpu(), time.process_time()
    result = drive(label, fleet.traces_urls, templates, None, lambda: sum(map(tree_cpu, pids)))
    out = Ingest(
        result,
        len(fleet),
        result.cpu,
        database_cpu() - db_before,
        time.process_time() - client_before,
        max(peak_rss(pid) for pid in pids),
        stored(),
    )
    errors = metric(fleet, "lightning_otlp_failed_requests")
    out.conflicts = metric(fleet, "lightning_otlp_store_conflicts")
    if out.stored < result.spans or out.stored > result.spans + result.failed * BATCH:
        raise RuntimeError(f"{label}: {out.stored:,} spans stored, {result.spans:,} acknowledged")
    if errors or result.failed or fleet.tracebacks():
        raise RuntimeError(f"{label}: {errors} exports answered with an error")
    say(out.line())
    return out


def metric(fleet: Fleet, name: str) -> int:
    """A counter summed over the fleet's receivers (and over its labels)."""
    total = 0
    for receiver in fleet:
        text = httpx.get(receiver.health_url + "/metrics", timeout=30).text
        total += sum(
            int(float(line.split()[-1]))
            for line in text.splitlines()
            if line.startswith((name + "{", name + " "))
        )
    return total


@contextmanager
def postgres() -> Iterator[tuple[PostgresServer, Callable[[], float]]]:
    """A throwaway server (as the tests start one) and the CPU seconds of its processes."""
    server = PostgresServer().start()
    try:
        postmaster = int((server.data_dir / "postmaster.pid").read_text().split()[0])
        yield server, lambda: tree_cpu(postmaster)
    finally:
        server.close()


def count_pg(url: str) -> Callable[[], int]:
    return lambda: int(query(url, "SELECT COUNT(*) FROM spans")[0][0])


def count_sqlite(path: Path) -> Callable[[], int]:
    def count() -> int:
        with sqlite3.connect(path) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM spans").fetchone()[0])

    return count


def round_trips(urls: Sequence[str]) -> dict[str, list[float]]:
    """The API calls' latencies (seconds) from agentlightning's own client, by call."""
    done = subprocess.run(
        [AGL_PYTHON, "-c", ROUND_TRIPS, str(API_CLIENTS), str(API_CYCLES), str(API_SPANS), *urls],
        capture_output=True,
        text=True,
        timeout=3600,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
    )
    if done.returncode != 0:
        raise RuntimeError(f"API round trips failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["retried"]:
        raise RuntimeError(f"{result['retried']} API calls answered 5xx or lost, then retried")
    calls: dict[str, list[float]] = result["calls"]
    return calls


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    if q == 0.5:
        return statistics.median(ordered) * 1000
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


def run_ingest(tmp: Path) -> list[Ingest]:
    """agl store, one receiver on SQLite, then 1, 2 and 3 receivers on one PostgreSQL."""
    runs: list[Ingest] = []
    with agl_store_process(tmp / "agl.log") as (base, agl):
        templates = make_templates(create_rollouts(base, EXPORTERS * TEMPLATES))
        upstream = drive(
            "agl store 0.3.0  -> memory",
            [base + "/v1/traces"],
            templates,
            None,
            lambda: tree_cpu(agl.pid),
        )
        say(f"  CPU us/span: server {upstream.cpu / upstream.spans * 1e6:.1f}")
        runs.append(Ingest(upstream, 1, upstream.cpu, 0.0, 0.0, peak_rss(agl.pid), 0))
    sqlite_dir = tmp / "sqlite"
    sqlite_dir.mkdir()
    with Fleet(f"sqlite:///{sqlite_dir / 'bench.db'}", sqlite_dir, count=1) as fleet:
        counter = count_sqlite(sqlite_dir / "bench.db")
        runs.append(ingest("lightning-otlp  1 x SQLite (FULL)", fleet, templates, _none, counter))
    with postgres() as (server, pg_cpu):
        for count in (1, 2, 3):
            url = server.create_database(f"ingest_{count}")
            workdir = tmp / f"pg{count}"
            workdir.mkdir()
            with Fleet(url, workdir, count=count) as fleet:
                label = f"lightning-otlp  {count} x PostgreSQL"
                lsn = query(url, "SELECT pg_current_wal_lsn()")[0][0]
                run = ingest(label, fleet, templates, pg_cpu, count_pg(url))
                run.wal = float(
                    query(url, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (lsn,))[0][0]
                )
                # spans is partitioned: its own size is 0, its partitions hold the rows
                size = query(
                    url,
                    "SELECT COALESCE(SUM(pg_total_relation_size(relid)), 0)"
                    " FROM pg_partition_tree('spans')",
                )[0][0]
                say(
                    f"  PostgreSQL: WAL {run.wal / run.stored:,.0f} bytes a span; the spans table"
                    f" with its indexes {size / run.stored:,.0f} bytes a span"
                )
                runs.append(run)
                settle(fleet.http_urls[0])
    return runs


def _none() -> float:
    return 0.0


def run_api(tmp: Path) -> dict[str, dict[str, list[float]]]:
    out = {}
    sqlite_dir = tmp / "api-sqlite"
    sqlite_dir.mkdir()
    with Fleet(f"sqlite:///{sqlite_dir / 'api.db'}", sqlite_dir, count=1) as fleet:
        out["SQLite, 1 receiver"] = round_trips(fleet.http_urls)
        if fleet.tracebacks():
            raise RuntimeError(fleet.tracebacks()[0][-3000:])
    with postgres() as (server, _), ExitStack() as stack:
        workdir = tmp / "api-pg"
        workdir.mkdir()
        fleet = stack.enter_context(Fleet(server.create_database("api"), workdir, count=2))
        out["PostgreSQL, 2 receivers"] = round_trips(fleet.http_urls)
        conflicts = metric(fleet, "lightning_otlp_store_conflicts")
        say(f"  PostgreSQL: {conflicts} transactions run again after a conflict")
        if fleet.tracebacks():
            raise RuntimeError(fleet.tracebacks()[0][-3000:])
    return out


def report_ingest(runs: list[Ingest]) -> None:
    upstream, sqlite, *pg = runs
    for run in pg:
        say(
            f"ratio: {run.receivers} x PostgreSQL {run.load.rate / sqlite.load.rate:.2f}x one"
            f" receiver on SQLite, {run.load.rate / upstream.load.rate:.1f}x agl store; {load()}"
        )
    best = pg[-1]
    db_us = best.per_span(best.database_cpu)
    recv_us = best.per_span(best.receiver_cpu)
    say(
        f"projected ceilings where each part's own CPU is the limit ({best.receivers} receivers):"
        f" one PostgreSQL core {1e6 / db_us:,.0f} spans/s ({db_us:.1f} us a span), one receiver"
        f" {1e6 / recv_us:,.0f} spans/s ({recv_us:.1f} us a span; a receiver is one Python"
        f" process, about one core); {load()}"
    )
    note = f"{EXPORTERS} exporters x {BATCH} spans; {load()}"
    bar_chart(
        "fleet-ingest",
        "Ingest, OTel SDK exporters spread over the receivers (spans/s, higher is better)",
        "spans/s",
        {
            **{f"lightning-otlp ({r.receivers} x PostgreSQL)": r.load.rate for r in pg},
            "lightning-otlp (1 x SQLite, FULL sync)": sqlite.load.rate,
            "agl store 0.3.0 (memory)": upstream.load.rate,
        },
        note,
    )
    bars = {}
    for r in pg:
        bars[f"lightning-otlp {r.receivers} x PG: receivers"] = r.per_span(r.receiver_cpu)
        bars[f"lightning-otlp {r.receivers} x PG: PostgreSQL"] = r.per_span(r.database_cpu)
    bars["lightning-otlp 1 x SQLite: receiver"] = sqlite.per_span(sqlite.receiver_cpu)
    bars["agl store 0.3.0: server"] = upstream.per_span(upstream.receiver_cpu)
    bar_chart("fleet-cpu", "CPU per span stored, by part (us, lower is better)", "us", bars, note)


def report_api(calls: dict[str, dict[str, list[float]]]) -> None:
    sqlite, pg = calls["SQLite, 1 receiver"], calls["PostgreSQL, 2 receivers"]
    say(f"{API_CLIENTS} concurrent LightningStoreClients, {API_CYCLES} cycles each; {load()}")
    for call in CALLS:
        ours, theirs = pct(pg[call], 0.99), pct(sqlite[call], 0.99)
        say(
            f"  {call:<15} SQLite p50 {pct(sqlite[call], 0.5):6.1f} ms p99 {theirs:6.1f} ms"
            f"   PostgreSQL p50 {pct(pg[call], 0.5):6.1f} ms p99 {ours:6.1f} ms"
            f"   p99 {ours / theirs:.2f}x (aim: <= 2x); {load()}"
        )
    bars = {}
    for call in CALLS:
        bars[f"lightning-otlp {call}: SQLite"] = pct(sqlite[call], 0.99)
        bars[f"lightning-otlp {call}: PostgreSQL x2"] = pct(pg[call], 0.99)
    bar_chart(
        "fleet-api",
        f"LightningStore API p99, {API_CLIENTS} concurrent clients (ms, lower is better)",
        "ms",
        bars,
        load(),
    )


def main() -> None:
    say(
        f"{EXPORTERS} OTel SDK OTLP/HTTP exporters, {BATCH} spans an export, {SECONDS:.0f} s a"
        " run; PostgreSQL, receivers and clients share this machine's cores"
    )
    with tempfile.TemporaryDirectory() as tmp:
        report_ingest(run_ingest(Path(tmp)))
        report_api(run_api(Path(tmp)))


if __name__ == "__main__":
    main()
