"""agentlightning 0.3.0's own LightningStoreClient against ``lightning-otlp serve`` and against
``agl store``: every method, the same answers modulo generated ids and times."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import ROOT, AglStore, ReceiverProcess, run_agl_script

pytestmark = [pytest.mark.e2e, pytest.mark.agl, pytest.mark.api]

SCRIPT = ROOT / "tests" / "clients" / "agl_conformance.py"
_ID = re.compile(
    r"\b(ro|at|rs)-[0-9a-f]{12}\b|\b(at)-[0-9a-f]{8}\b|\b[0-9a-f]{32}\b|\b[0-9a-f]{16}\b"
)
_ADDRESS = re.compile(r"0x[0-9a-f]+")  # object reprs the client copies from SDK spans
# Figures only one side has: upstream's memory accounting, and the store's own name.
_STATISTICS = (
    "total_rollouts",
    "total_attempts",
    "total_spans",
    "total_resources",
    "total_workers",
)


class Normalizer:
    """Generated ids become ``<id1>``, ``<id2>``... in order of appearance; times become ``<t>``."""

    def __init__(self) -> None:
        self.ids: dict[str, str] = {}

    def __call__(self, value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            if "total_rollouts" in value:
                return {k: value[k] for k in _STATISTICS}
            if key == "body" and "detail" in value and isinstance(value["detail"], list):
                # 422: compare where and what, not pydantic's wording
                return {"detail": [(e["type"], e["loc"]) for e in value["detail"]]}
            return {k: self(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self(v, key) for v in value]
        if isinstance(value, float) and (key.endswith("_time") or key == "uptime"):
            return "<t>"
        if isinstance(value, str):
            return _ADDRESS.sub("0x?", _ID.sub(self._id, value))
        return value

    def _id(self, match: re.Match[str]) -> str:
        return self.ids.setdefault(match.group(0), f"<id{len(self.ids) + 1}>")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def results(
    request: pytest.FixtureRequest, tmp_path_factory: Any
) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Both scenarios against both servers, in one agentlightning process (its import is slow),
    on every backend: the embedded store and a real PostgreSQL server."""
    tmp = tmp_path_factory.mktemp("conformance")
    store = None
    if request.param == "postgresql":
        store = request.getfixturevalue("pg_server").create_database()
    ours = ReceiverProcess(tmp / "receiver.db", store=store).start()
    upstream = AglStore(tmp / "agl.log").start()
    try:
        yield ours.http_url, upstream.url, run_agl_script(SCRIPT, ours.http_url, upstream.url)
    finally:
        upstream.stop()
        assert ours.stop() == 0, ours.log()
        assert "Traceback" not in ours.log()


def test_every_method_answers_as_agl_store_does(
    results: tuple[str, str, dict[str, Any]],
) -> None:
    compare(results, "api")


def test_watchdog_retries_and_workers_as_agl_store_does(
    results: tuple[str, str, dict[str, Any]],
) -> None:
    """Timeout, unresponsive, requeue, a lost worker's late span: the same lifecycle."""
    compare(results, "watchdog")


def compare(results: tuple[str, str, dict[str, Any]], scenario: str) -> None:
    ours, upstream, answers = results
    mine, theirs = answers[scenario][ours], answers[scenario][upstream]
    assert [s for s, _ in mine] == [s for s, _ in theirs]
    norm_mine, norm_theirs = Normalizer(), Normalizer()
    mismatches = []
    for (step, a), (_, b) in zip(mine, theirs, strict=True):
        left, right = norm_mine(a), norm_theirs(b)
        if right == {"status": 500} and left == {"status": 404}:
            continue  # the one deliberate change: a missing rollout or attempt is no 5xx here
        if left != right:
            mismatches.append(f"{step}:\n  lightning-otlp: {left}\n  agl store:      {right}")
    assert not mismatches, "\n".join(mismatches)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def sequences(
    request: pytest.FixtureRequest, tmp_path_factory: Any
) -> Iterator[dict[str, dict[str, Any]]]:
    """The sequence scenario against ``serve`` in each sequence-id mode and against agl store:
    each server's answers by step, on each backend."""
    tmp = tmp_path_factory.mktemp("sequences")
    stores: dict[str, str | None] = {"start-time": None, "counter": None}
    if request.param == "postgresql":
        server = request.getfixturevalue("pg_server")
        stores = {name: server.create_database() for name in stores}
    servers = {
        "start-time": ReceiverProcess(tmp / "start-time.db", store=stores["start-time"]).start(),
        "counter": ReceiverProcess(
            tmp / "counter.db", "--sequence-ids", "counter", store=stores["counter"]
        ).start(),
    }
    upstream = AglStore(tmp / "agl.log").start()
    urls = {name: server.http_url for name, server in servers.items()} | {"agl": upstream.url}
    try:
        got = run_agl_script(SCRIPT, *urls.values(), env={"CONFORMANCE_SCENARIOS": "sequence"})
    finally:
        upstream.stop()
        for server in servers.values():
            assert server.stop() == 0, server.log()
            assert "Traceback" not in server.log()
    yield {name: dict(got["sequence"][url]) for name, url in urls.items()}


def test_counter_sequence_ids_are_agl_stores_own(sequences: dict[str, dict[str, Any]]) -> None:
    """1, 2, 3... per attempt in arrival order, one counter for spans/next, add_span,
    add_otel_span and OTLP; explicit ids kept and counted past: the very numbers agl store
    gives, step by step."""
    counter, upstream = sequences["counter"], sequences["agl"]
    steps = [s for s in upstream if not s.startswith("_") and s not in _LIFECYCLE_STEPS]
    assert {s: counter[s] for s in steps} == {s: upstream[s] for s in steps}
    assert counter["issued"] == [1, 2, 3]
    assert counter["issued_after_explicit"] == 102


def test_start_time_sequence_ids_are_unique_and_follow_time(
    sequences: dict[str, dict[str, Any]],
) -> None:
    got = sequences["start-time"]
    issued = got["issued"]
    assert issued == sorted(set(issued))
    assert got["add_span_issued"] == issued[0]
    spans = dict(got["spans"])
    assert len(spans) == len(got["spans"]) == 28, got["spans"]
    assert len(set(spans.values())) == len(spans)  # unique within the attempt
    # OTLP spans by start time, whatever order they arrived in: the one that started first
    # (and arrived last) comes before every span numbered from a time.
    timed = [seq for name, seq in got["spans"] if name not in _EXPLICIT]
    assert spans["otlp-early"] == min(timed)
    assert spans["otlp-1"] < spans["otlp-2"]
    assert len(set(got["concurrent"])) == 20


@pytest.mark.parametrize("mode", ["start-time", "counter"])
def test_explicit_sequence_ids_are_kept(sequences: dict[str, dict[str, Any]], mode: str) -> None:
    got = sequences[mode]
    assert (got["add_span_explicit"], got["add_otel_span_explicit"]) == (101, 7)
    for name, seq in _EXPLICIT.items():
        assert dict(got["spans"])[name] == seq


@pytest.mark.parametrize("mode", ["start-time", "counter"])
def test_concurrent_writers_each_get_their_own_sequence_id(
    sequences: dict[str, dict[str, Any]], mode: str
) -> None:
    got = sequences[mode]
    assert len(got["concurrent"]) == len(set(got["concurrent"])) == 20
    stored = [seq for name, seq in got["spans"] if name.startswith("concurrent-")]
    assert sorted(stored) == got["concurrent"]


@pytest.mark.parametrize("mode", ["start-time", "counter"])
def test_limit_0_answers_an_empty_page_with_its_total(
    sequences: dict[str, dict[str, Any]], mode: str
) -> None:
    got = sequences[mode]
    assert got["rollouts_limit_0"] == {"items": 0, "total": 1}
    assert got["attempts_limit_0"] == {"items": 0, "total": 1}
    assert got["spans_limit_0"] == {"items": 0, "total": 28}


@pytest.mark.parametrize("mode", ["start-time", "counter"])
def test_the_next_query_sees_an_attempt_past_its_deadline(
    sequences: dict[str, dict[str, Any]], mode: str
) -> None:
    """No waiting for the watchdog's next scan: the query about a rollout checks it first."""
    got = sequences[mode]
    assert got["deadline_running"] == ["running", "running"]
    assert (got["timeout_attempts"], got["timeout_rollout"]) == (["timeout"], "requeuing")
    assert (got["unresponsive_attempt"], got["unresponsive_rollout"]) == ("unresponsive", "failed")


# Spans given their sequence id by the client, and the id each was given.
_EXPLICIT = {"explicit": 101, "otel-explicit": 7, "otlp-explicit": 55}
# Steps where agl store differs on purpose: it answers limit=0 with 400, and its watchdog
# scans at most every 10 s, so a query right after a deadline still sees the attempt running.
_LIFECYCLE_STEPS = (
    "rollouts_limit_0",
    "attempts_limit_0",
    "spans_limit_0",
    "timeout_attempts",
    "timeout_rollout",
    "unresponsive_attempt",
    "unresponsive_rollout",
)
