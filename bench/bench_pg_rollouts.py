"""PostgreSQL ingest when requests reuse rollouts and when each starts a new one: the store's
``write_many`` in this process, on a throwaway PostgreSQL server, groups of requests as the
receiver's group commit hands them over.

Each rollout's spans commit in a serializable transaction of their own, several rollouts at
once; a transaction PostgreSQL aborts as conflicting with a concurrent one is run again. New
rollouts are where conflicts come from: their transactions look up rows that do not exist yet
and insert them beside each other in the same index pages. Figures per case: spans/s through
``write_many``, the conflicts run again, and CPU microseconds per span of this process and of
the database server (its processes through ``/proc``). Requests are decoded and routed before
the clock starts; each run checks that every span acknowledged was stored.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass

from bench.bench_fleet import tree_cpu
from bench.bench_ingest import (
    _MARKER,
    _TIME_BASE,
    _TIME_BYTES,
    BATCH,
    EXPORTERS,
    TEMPLATES,
    make_templates,
)
from bench.common import load, say
from lightning_otlp.batch import SpanBatch
from lightning_otlp.ids import new_attempt_id, new_rollout_id
from lightning_otlp.receiver.decode import decode_traces
from lightning_otlp.receiver.route import RoutingConfig, route
from lightning_otlp.store.postgres import PostgresStore
from tests.postgres import PostgresServer, query

GROUPS = int(os.environ.get("BENCH_PG_GROUPS", "40"))
REQUESTS = 8  # requests a group: as many as exporters send at once
ROUNDS = int(os.environ.get("BENCH_PG_ROUNDS", "2"))  # each case this often, interleaved
_SENT = itertools.count(1)  # each request's own span ids and later times


@dataclass
class Run:
    label: str
    spans: int = 0
    seconds: float = 0.0
    conflicts: int = 0
    cpu_self: float = 0.0
    cpu_server: float = 0.0

    def line(self) -> str:
        rate = self.spans / self.seconds if self.seconds else 0.0
        per = 1e6 / self.spans if self.spans else 0.0
        return (
            f"{self.label:<28} {rate:>8,.0f} spans/s  {self.conflicts:>4} conflicts"
            f"  CPU {self.cpu_self * per:5.1f} us/span here + {self.cpu_server * per:5.1f}"
            f" us/span PostgreSQL  ({load()})"
        )


def requests(templates: list[tuple[bytes, str]], new: bool) -> list[SpanBatch]:
    """``REQUESTS`` routed requests, fresh span ids and later times each (as
    ``bench_ingest.drive`` sends them); of fresh rollouts when ``new``."""
    out = []
    for _ in range(REQUESTS):
        n = next(_SENT)
        body, rollout_id = templates[n % len(templates)]
        body = body.replace(_MARKER, n.to_bytes(4, "big"))
        body = body.replace(_TIME_BYTES, (_TIME_BASE + n).to_bytes(4, "little"))
        if new:
            body = body.replace(rollout_id.encode(), new_rollout_id().encode())
        out.append(route(decode_traces(body), RoutingConfig(), body))
    return out


def run(
    store: PostgresStore, server: PostgresServer, templates: list[tuple[bytes, str]], new: bool
) -> Run:
    result = Run("every request a new rollout" if new else "rollouts reused")
    for _ in range(GROUPS):
        group = requests(templates, new)
        conflicts = store._conflicts
        cpu_self, cpu_server = time.process_time(), tree_cpu(server_pid(server))
        started = time.perf_counter()
        written = store.write_many(group)
        result.seconds += time.perf_counter() - started
        result.cpu_self += time.process_time() - cpu_self
        result.cpu_server += tree_cpu(server_pid(server)) - cpu_server
        result.conflicts += store._conflicts - conflicts
        result.spans += sum(w.stored for w in written)
        if any(w.stored != b.accepted for w, b in zip(written, group, strict=True)):
            raise SystemExit(f"{result.label}: a request was not stored whole")
    say(result.line())
    return result


def server_pid(server: PostgresServer) -> int:
    return int((server.data_dir / "postmaster.pid").read_text().split()[0])


def main() -> None:
    say(
        f"write_many, groups of {REQUESTS} requests x {BATCH} spans, {GROUPS} groups a run,"
        f" {ROUNDS} rounds of each case interleaved"
    )
    server = PostgresServer().start()
    try:
        url = server.create_database("bench")
        store = PostgresStore(url)
        store.open()
        try:
            rollouts = [(new_rollout_id(), new_attempt_id()) for _ in range(EXPORTERS * TEMPLATES)]
            bodies = [body for each in make_templates(rollouts) for body in each]
            templates = list(zip(bodies, [r for r, _ in rollouts], strict=True))
            stored_first = 0
            for _ in range(len(templates) // REQUESTS):  # the reused rollouts exist before
                warm = requests(templates, new=False)
                stored_first += sum(w.stored for w in store.write_many(warm))
            runs: list[Run] = []
            for _ in range(ROUNDS):
                runs.append(run(store, server, templates, new=False))
                runs.append(run(store, server, templates, new=True))
            stored = query(url, "SELECT COUNT(*) FROM spans")[0][0]
            acknowledged = sum(r.spans for r in runs) + stored_first
            if stored != acknowledged:
                raise SystemExit(f"{stored} spans stored, {acknowledged} acknowledged")
            say(f"{stored:,} spans stored, as acknowledged")
        finally:
            store.close()
    finally:
        server.close()


if __name__ == "__main__":
    main()
