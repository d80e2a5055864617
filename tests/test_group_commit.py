"""Group commit: requests that wait for the store thread share one transaction, and the result is
what committing them one after the other gives, trace affinity included; one failing request
fails alone."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from lightning_otlp.batch import SpanBatch
from lightning_otlp.errors import StoreUnavailable
from lightning_otlp.forward.store import ForwardingStore
from lightning_otlp.receiver.decode import PROTOBUF
from lightning_otlp.receiver.pipeline import Pipeline
from lightning_otlp.receiver.route import RoutingConfig
from lightning_otlp.store import SQLiteStore

from .payloads import genai_request, make_request, make_span
from .test_affinity import IDS, MS, RID


def _requests() -> list[bytes]:
    """Spans of one trace before and after the span that binds it to a rollout, with other
    rollouts' requests between them: the order matters for where each span lands."""
    trace = make_span("x").trace_id
    other = make_span("y").trace_id
    steps = [
        [make_span("early-0", trace_id=trace, start_ns=20 * MS)],
        [make_span("unbound", trace_id=other, start_ns=21 * MS)],
        [make_span("early-1", trace_id=trace, start_ns=22 * MS)],
        [
            make_span(
                "agentlightning.rollout.start", trace_id=trace, attributes=IDS, start_ns=10 * MS
            )
        ],
        [make_span("late", trace_id=trace, start_ns=30 * MS)],
    ]
    out = [make_request(spans).SerializeToString() for spans in steps]
    for seed in range(6):  # explicit rollouts, many spans
        out.insert(2 * seed % len(out), genai_request(300, seed=seed).SerializeToString())
    return out


def _records(store: SQLiteStore) -> list[tuple[Any, ...]]:
    return [
        (s["rollout_id"], s["attempt_id"], s["sequence_id"], s["name"], s["span_id"])
        for s in store.spans()
    ]


def _concurrently(pipeline: Pipeline, bodies: list[bytes]) -> list[Any]:
    async def run() -> list[Any]:
        exports = [pipeline.export("traces", body, None, PROTOBUF, "http") for body in bodies]
        return await asyncio.gather(*exports, return_exceptions=True)

    return asyncio.run(run())


def test_concurrent_requests_commit_together_as_if_one_after_the_other() -> None:
    bodies = _requests()
    one_by_one = SQLiteStore(":memory:")
    one_by_one.open()
    sequential = Pipeline(one_by_one, RoutingConfig())
    for body in bodies:
        sequential.export_traces(body, None, PROTOBUF)
    grouped_store = SQLiteStore(":memory:")
    grouped_store.open()
    grouped = Pipeline(grouped_store, RoutingConfig())
    try:
        answers = _concurrently(grouped, bodies)
        assert not [a for a in answers if isinstance(a, BaseException)]
        assert _records(grouped_store) == _records(one_by_one)
        assert {s["rollout_id"] for s in grouped_store.spans() if s["name"] == "late"} == {RID}
        # Fewer transactions than requests: they were grouped.
        assert grouped.commit_seconds.count < len(bodies)
        assert sequential.commit_seconds.count == len(bodies)
        assert grouped_store.affinity.bindings == one_by_one.affinity.bindings
    finally:
        for p in (sequential, grouped):
            p.close()
            p.store.close()


class FailingOnce(SQLiteStore):
    """A store whose transaction fails when it holds the batch of ``poison`` spans (a disk
    error, say); written alone, the other batches succeed."""

    poison = 7
    groups_failed: list[int] = []

    def write_many(self, batches: Any) -> list[Any]:
        try:
            return super().write_many(batches)
        except StoreUnavailable:
            self.groups_failed.append(len(batches))
            raise

    def write_in(self, conn: Any, batch: SpanBatch, changes: Any) -> int:
        if batch.accepted == self.poison:
            raise StoreUnavailable("disk I/O error")
        return super().write_in(conn, batch, changes)


def test_a_failing_request_fails_alone_and_affinity_stays_true() -> None:
    store = FailingOnce(":memory:")
    store.open()
    pipeline = Pipeline(store, RoutingConfig())
    try:
        bodies = _requests()
        poison = make_request([make_span(f"p{i}") for i in range(FailingOnce.poison)])
        bodies.insert(4, poison.SerializeToString())
        answers = _concurrently(pipeline, bodies)
        failed = [i for i, a in enumerate(answers) if isinstance(a, BaseException)]
        assert failed == [4] and isinstance(answers[4], StoreUnavailable)
        assert max(store.groups_failed) > 1  # it failed within a group, then alone
        names = {s["name"] for s in store.spans()}
        assert {"early-0", "early-1", "late", "agentlightning.rollout.start"} <= names
        assert not any(name.startswith("p") and name[1:].isdigit() for name in names)
        # The bindings in memory are those on disk: the trace still follows its rollout.
        pipeline.export_traces(
            make_request(
                [make_span("after", trace_id=_trace_of(store, "late"))]
            ).SerializeToString(),
            None,
            PROTOBUF,
        )
        assert {s["rollout_id"] for s in store.spans() if s["name"] == "after"} == {RID}
    finally:
        pipeline.close()
        store.close()


def _trace_of(store: SQLiteStore, name: str) -> bytes:
    (trace_hex,) = {s["trace_id"] for s in store.spans() if s["name"] == name}
    return bytes.fromhex(trace_hex)


def test_the_forwarders_outbox_commits_groups_as_if_one_after_the_other(tmp_path: Path) -> None:
    """The outbox too takes a group in one transaction, all or none, with the same records,
    marks and trace affinity as the requests written alone."""
    bodies = _requests()
    stores = [
        ForwardingStore("http://127.0.0.1:9", str(tmp_path / f"{name}.db"), forward=False)
        for name in ("one", "grouped")
    ]
    for store in stores:
        store.open()
    sequential, grouped = (Pipeline(store, RoutingConfig()) for store in stores)
    try:
        for body in bodies:
            sequential.export_traces(body, None, PROTOBUF)
        answers = _concurrently(grouped, bodies)
        assert not [a for a in answers if isinstance(a, BaseException)]
        one, together = (list(s.spans()) for s in stores)
        key = ("rollout_id", "attempt_id", "sequence_id", "name", "span_id")
        assert [[s[k] for k in key] for s in together] == [[s[k] for k in key] for s in one]
        assert grouped.commit_seconds.count < len(bodies)
        assert stores[1].outbox.pending() == stores[0].outbox.pending()
        assert stores[1].affinity.bindings == stores[0].affinity.bindings
    finally:
        for p in (sequential, grouped):
            p.close()
            p.store.close()
