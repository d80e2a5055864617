"""Soak: honest clients keep their throughput while hostile ones attack the same receiver.

Runs a receiver on loopback with a bearer token, measures honest clients alone (the quiet runs:
OTLP over HTTP and gRPC, and a LightningStore API client enqueuing, dequeuing, finishing and
waiting for rollouts), and again while attackers hold slow connections, stall uploads, send
many-member gzip bodies, floods of empty spans and poison values, and attack the API: slow
bodies without a token, bodies past the size limit, JSON bombs, abandoned waits and reads of
whole rollouts (``bench/attackers.py``, in a process of their own); a prober times the health
endpoint throughout. Each round is a quiet and an
attacked run back to back, in turn first, each on a fresh store (a store grown by an earlier run
never counts against a later one). Reports honest throughput under attack against quiet (OTLP
spans and API rollouts), round by round with the median and spread (the machine's other work
moves single runs by a third), the slowest health answer,
the receiver's peak memory against a container budget, and checks that every span and rollout
acknowledged to an honest client is stored. Kept out of ``make test``:
``python bench/soak.py [--seconds N] [--only KINDS] [--profile PREFIX]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.attackers import AUTH, HONEST, KINDS, MIB, PB, TOKEN  # noqa: E402
from tests.payloads import genai_request  # noqa: E402
from tests.support import ReceiverProcess  # noqa: E402

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
API_INPUT = "soak"
ATTACKERS = Path(__file__).with_name("attackers.py")


class Honest:
    """Clients sending 512-span requests back to back; counts what was acknowledged."""

    def __init__(self, receiver: ReceiverProcess, stop: threading.Event) -> None:
        self.receiver = receiver
        self.stop = stop
        self.acknowledged = 0
        self.refused = Counter[str]()
        self.api_done = 0  # rollouts enqueued, dequeued, finished and seen finished
        self.slowest_live = 0.0  # seconds, the slowest health answer
        self._lock = threading.Lock()

    def http(self) -> None:
        request = genai_request(512, ids=HONEST)
        with httpx.Client(timeout=60, headers=AUTH) as client:
            while not self.stop.is_set():
                status = client.post(self.receiver.traces_url, content=_fresh(request), headers=PB)
                self._count(status.status_code == 200, f"http {status.status_code}")

    def grpc(self) -> None:
        request = genai_request(512, ids=HONEST)
        with grpc.insecure_channel(self.receiver.grpc_target) as channel:
            export = channel.unary_unary(EXPORT)
            while not self.stop.is_set():
                body = _fresh(request)
                try:
                    export(body, timeout=60, metadata=(("authorization", f"Bearer {TOKEN}"),))
                    self._count(True, "")
                except grpc.RpcError as exc:
                    self._count(False, f"grpc {exc.code().name}")

    def api(self) -> None:
        """One rollout at a time through the API's whole life, as a trainer and runner would."""
        base = self.receiver.http_url + "/v1/agl"
        with httpx.Client(timeout=60, headers=AUTH) as client:
            while not self.stop.is_set():
                done = self._api_round(client, base)
                with self._lock:
                    if done is None:
                        self.api_done += 1
                    else:
                        self.refused[done] += 1

    @staticmethod
    def _api_round(client: httpx.Client, base: str) -> str | None:
        """None when the round went through, else what refused it."""
        body = {"rollouts": [{"input": API_INPUT}]}
        enqueued = client.post(base + "/queues/rollouts/enqueue", json=body)
        if enqueued.status_code != 201:
            return f"api enqueue {enqueued.status_code}"
        taken = client.post(base + "/queues/rollouts/dequeue", json={"worker_id": "soak"})
        if taken.status_code != 200 or not taken.json():
            return f"api dequeue {taken.status_code}"
        rollout = taken.json()[0]
        path = f"/rollouts/{rollout['rollout_id']}/attempts/{rollout['attempt']['attempt_id']}"
        finished = client.post(base + path, json={"status": "succeeded"})
        if finished.status_code != 200:
            return f"api update_attempt {finished.status_code}"
        waited = client.post(
            base + "/waits/rollouts", json={"rollout_ids": [rollout["rollout_id"]], "timeout": 0.1}
        )
        if waited.status_code != 200 or len(waited.json()) != 1:
            return f"api wait {waited.status_code}"
        return None

    def live(self) -> None:
        """The health endpoint, five times a second: a liveness probe's view."""
        with httpx.Client(timeout=60) as client:
            while not self.stop.is_set():
                started = time.monotonic()
                client.get(self.receiver.health_url + "/health")
                took = time.monotonic() - started
                self.slowest_live = max(self.slowest_live, took)
                time.sleep(0.2)

    def _count(self, ok: bool, refusal: str) -> None:
        with self._lock:
            if ok:
                self.acknowledged += 512
            else:
                self.refused[refusal] += 1


def _fresh(request: Any) -> bytes:
    """The request with new span ids and times, as an exporter sends its next batch: new spans
    to store, for little client CPU."""
    base = time.time_ns()
    for i, span in enumerate(request.resource_spans[0].scope_spans[0].spans):
        span.span_id = os.urandom(8)
        length = span.end_time_unix_nano - span.start_time_unix_nano
        span.start_time_unix_nano = base + i * 1000
        span.end_time_unix_nano = span.start_time_unix_nano + length
    data: bytes = request.SerializeToString()
    return data


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss(pid: int) -> int:
    """The receiver's peak resident memory (VmHWM), bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def run(
    receiver: ReceiverProcess, seconds: float, kinds: set[str], profile: Path | None
) -> tuple[Honest, Counter[str]]:
    """Honest clients for ``seconds``, with attackers of ``kinds`` in a process of their own (so
    they do not take the honest clients' interpreter lock); with ``profile``, py-spy samples
    the receiver's threads holding the interpreter lock into that file (collapsed stacks)."""
    stop = threading.Event()
    honest = Honest(receiver, stop)
    threads = [
        threading.Thread(target=honest.http),
        threading.Thread(target=honest.grpc),
        threading.Thread(target=honest.api),
        threading.Thread(target=honest.live),
    ]
    attackers = None
    if kinds:
        attackers = subprocess.Popen(
            [sys.executable, str(ATTACKERS), receiver.http_url, "--seconds", str(seconds)]
            + ["--only", ",".join(sorted(kinds))],
            stdout=subprocess.PIPE,
            text=True,
        )
    spy = None
    if profile is not None:
        assert receiver.proc is not None
        spy = subprocess.Popen(
            [str(Path(sys.executable).with_name("py-spy")), "record", "--gil", "--format", "raw"]
            + ["-p", str(receiver.proc.pid), "-d", str(int(seconds)), "-o", str(profile)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    started = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(180)
    honest.elapsed = time.monotonic() - started  # type: ignore[attr-defined]
    if spy is not None:
        spy.wait(60)
    answers = Counter[str]()
    if attackers is not None:
        out, _ = attackers.communicate(timeout=300)
        answers.update(json.loads(out.strip().splitlines()[-1]))
    return honest, answers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each run (30)")
    parser.add_argument(
        "--budget-mib", type=int, default=512, help="container memory to compare against (512)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="rounds of a quiet and an attacked run, in turn first (5)",
    )
    parser.add_argument(
        "--only",
        default=",".join(KINDS),
        help=f"attacker kinds, comma-separated, of {', '.join(KINDS)} (all)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="PREFIX",
        help="py-spy (from this interpreter's bin) samples the receiver in each run:"
        " PREFIX-quiet-N.txt, PREFIX-attack-N.txt (collapsed stacks, lock holders only)",
    )
    args = parser.parse_args()
    kinds = set(args.only.split(",")) - {""}
    if kinds - set(KINDS):
        parser.error(f"unknown attacker kinds: {', '.join(sorted(kinds - set(KINDS)))}")
    print(f"attackers: {', '.join(sorted(kinds))}")
    quiet, loud = Phase(), Phase()
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.rounds):
            # A quiet and an attacked run back to back, each on a fresh store, the quiet one first
            # in every other round: what else the machine runs then weighs on both halves of most
            # rounds, and the rounds' median ratio shows the receiver, not the machine meanwhile.
            order = [(quiet, "quiet", set()), (loud, "attack", kinds)]
            for phase, name, chosen in order if n % 2 == 0 else order[::-1]:
                spy = None if args.profile is None else Path(f"{args.profile}-{name}-{n}.txt")
                result = run_phase(Path(tmp) / f"{name}-{n}.db", args.seconds, chosen, spy)
                phase.add(result)
                print(f"round {n + 1} {name + ':':7} {phase.last()}", flush=True)
    quiet_rate, loud_rate = quiet.rate(), loud.rate()
    print(f"quiet runs:   {quiet_rate:9,.0f} honest spans/s  ({quiet.acknowledged:,} acknowledged)")
    print(f"under attack: {loud_rate:9,.0f} honest spans/s  ({loud.acknowledged:,} acknowledged)")
    ratio = by_round("ratio:       ", quiet.rates, loud.rates, loud_rate / quiet_rate)
    quiet_api, loud_api = quiet.api_rate(), loud.api_rate()
    print(f"API quiet:    {quiet_api:9,.1f} honest rollouts/s through enqueue..wait")
    print(f"API attacked: {loud_api:9,.1f} honest rollouts/s")
    total_api = loud_api / quiet_api if quiet_api else 0.0
    api_ratio = by_round("API ratio:   ", quiet.api_rates, loud.api_rates, total_api)
    print(
        f"liveness:     slowest health answer {quiet.slowest_live:.3f} s quiet,"
        f" {loud.slowest_live:.3f} s under attack (done when < 1 s)"
    )
    print(
        f"receiver CPU: {quiet.cpu / quiet.elapsed:.0%} of a core quiet,"
        f" {loud.cpu / loud.elapsed:.0%} under attack"
    )
    # The receiver's CPU spent on the attackers: its CPU under attack less what the honest work
    # it did meanwhile cost in the same round's quiet run. It moves far less with the machine's
    # other load than the ratios do, and it is the part the receiver can cut.
    spent = [
        cpu - rate / quiet_rate * quiet_cpu
        for quiet_cpu, quiet_rate, cpu, rate in zip(
            quiet.cpus, quiet.rates, loud.cpus, loud.rates, strict=True
        )
        if quiet_rate
    ]
    if spent:
        print(
            f"              of which on the attackers {statistics.median(spent):.0%} of a core"
            f" (median; by round: {' '.join(f'{x:.2f}' for x in spent)})"
        )
    attackers = loud.answers.pop("cpu seconds of the attackers' process", 0)
    print(
        f"other CPU:    honest clients {quiet.own:.1f} s quiet, {loud.own:.1f} s under attack;"
        f" attackers {attackers} s, on {os.cpu_count()} cores"
    )
    if quiet.refused or loud.refused:
        print(f"honest refusals: quiet {dict(quiet.refused)}, under attack {dict(loud.refused)}")
    print(
        f"peak RSS:     {loud.rss / MIB:9.0f} MiB  (quiet runs {quiet.rss / MIB:.0f} MiB;"
        f" budget {args.budget_mib} MiB)"
    )
    acknowledged = quiet.acknowledged + loud.acknowledged
    kept = quiet.kept + loud.kept
    print(f"durability:   {kept:,} honest spans stored of {acknowledged:,} acknowledged")
    api_done, api_kept = quiet.api_done + loud.api_done, quiet.api_kept + loud.api_kept
    print(f"              {api_kept:,} API rollouts stored succeeded of {api_done:,} acknowledged")
    print(f"receiver exit codes after SIGTERM: {sorted(set(quiet.codes + loud.codes))}")
    print("attackers' answers:")
    for answer, n in sorted(loud.answers.items()):
        print(f"  {n:6d}  {answer}")
    ok = (
        ratio >= 0.8
        and api_ratio >= 0.8
        and loud.slowest_live < 1.0
        and loud.rss <= args.budget_mib * MIB
        and kept >= acknowledged
        and api_kept >= api_done
        and set(quiet.codes + loud.codes) == {0}
    )
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def by_round(label: str, quiet: list[float], loud: list[float], total: float) -> float:
    """Print the ratio of the totals and of each round's own runs; return the rounds' median."""
    ratios = [b / a if a else 0.0 for a, b in zip(quiet, loud, strict=True)]
    median = statistics.median(ratios)
    print(
        f"{label} {median:9.2f}  median of {len(ratios)} rounds (done when >= 0.80);"
        f" spread {min(ratios):.2f}-{max(ratios):.2f}; of the totals {total:.2f}"
    )
    print(f"              by round: {' '.join(f'{r:.2f}' for r in ratios)}")
    return median


class Phase:
    """Totals over the runs of one kind (quiet, or under attack), and each run's rates."""

    def __init__(self) -> None:
        self.rates: list[float] = []  # honest spans/s, a run each
        self.api_rates: list[float] = []  # honest rollouts/s
        self.loads: list[tuple[float, float]] = []  # load average at a run's start and end
        self.cpus: list[float] = []  # the receiver's share of a core
        self.acknowledged = self.kept = self.api_done = self.api_kept = 0
        self.elapsed = self.cpu = self.own = self.slowest_live = 0.0
        self.rss = 0
        self.refused = Counter[str]()
        self.answers = Counter[str]()
        self.codes: list[int] = []

    def add(self, result: dict[str, Any]) -> None:
        honest: Honest = result["honest"]
        elapsed: float = honest.elapsed  # type: ignore[attr-defined]
        self.rates.append(honest.acknowledged / elapsed)
        self.api_rates.append(honest.api_done / elapsed)
        self.loads.append(result["load"])
        self.cpus.append(result["cpu"] / elapsed)
        self.acknowledged += honest.acknowledged
        self.api_done += honest.api_done
        self.api_kept += result["api_kept"]
        self.slowest_live = max(self.slowest_live, honest.slowest_live)
        self.elapsed += honest.elapsed  # type: ignore[attr-defined]
        self.refused.update(honest.refused)
        self.answers.update(result["answers"])
        self.cpu += result["cpu"]
        self.own += result["own"]
        self.rss = max(self.rss, result["rss"])
        self.kept += result["kept"]
        self.codes.append(result["code"])

    def last(self) -> str:
        """The latest run, in a line."""
        start, end = self.loads[-1]
        return (
            f"{self.rates[-1]:7,.0f} spans/s, {self.api_rates[-1]:4.1f} rollouts/s,"
            f" receiver {self.cpus[-1]:4.0%} of a core, load {start:.1f} -> {end:.1f}"
        )

    def rate(self) -> float:
        return self.acknowledged / self.elapsed if self.elapsed else 0.0

    def api_rate(self) -> float:
        return self.api_done / self.elapsed if self.elapsed else 0.0


def run_phase(db: Path, seconds: float, kinds: set[str], profile: Path | None) -> dict[str, Any]:
    """One run against a fresh receiver: a store that grew in an earlier run would make the
    later run's inserts dearer, whatever the attackers do."""
    tokens = db.with_suffix(".tokens")
    tokens.write_text(TOKEN + "\n")
    receiver = ReceiverProcess(db, "--auth-token-file", str(tokens)).start()
    assert receiver.proc is not None
    try:
        pid = receiver.proc.pid
        load0 = os.getloadavg()[0]
        cpu0, own0 = cpu_seconds(pid), cpu_seconds(os.getpid())
        honest, answers = run(receiver, seconds, kinds, profile)
        rss = peak_rss(pid)
        cpu1, own1 = cpu_seconds(pid), cpu_seconds(os.getpid())
        load1 = os.getloadavg()[0]
    finally:
        code = receiver.stop()
    with sqlite3.connect(db) as conn:
        kept = conn.execute("SELECT COUNT(*) FROM spans WHERE rollout_id LIKE 'ro-50a4%'")
        stored = kept.fetchone()[0]
        api_kept = conn.execute(
            "SELECT COUNT(*) FROM rollouts WHERE input = ? AND status = 'succeeded'",
            (json.dumps(API_INPUT),),
        ).fetchone()[0]
    return {
        "honest": honest,
        "answers": answers,
        "cpu": cpu1 - cpu0,
        "own": own1 - own0,
        "rss": rss,
        "kept": stored,
        "api_kept": api_kept,
        "code": code,
        "load": (load0, load1),
    }


if __name__ == "__main__":
    sys.exit(main())
