"""The LightningStore API's calls about different rollouts, at once on a real PostgreSQL server:
what each serializable transaction reads and writes, so that PostgreSQL finds no conflict
between them and runs none again."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest

from lightning_otlp.store.dialect import Conn
from lightning_otlp.store.postgres import PostgresStore
from lightning_otlp.store.postgres_api import PostgresLightningStore

from .postgres import execute, query
from .support import Clock
from .test_api import span

pytestmark = pytest.mark.postgres

_CONFLICTS = "lightning_otlp_store_conflicts"


class HeldOpen(PostgresLightningStore):
    """Each call's transaction, once its statements ran, waits for the other call's before
    committing (``barrier``): two calls whose transactions are open at once."""

    barrier: threading.Barrier | None = None

    def _write(self, queue: bool = False) -> AbstractContextManager[Conn]:
        return self._held(super()._write(queue))

    @contextmanager
    def _held(self, transaction: AbstractContextManager[Conn]) -> Iterator[Conn]:
        with transaction as conn:
            yield conn
            if self.barrier is not None:
                self.barrier.wait(timeout=10)


@pytest.fixture
def api(pg_url: str) -> Iterator[HeldOpen]:
    store = PostgresStore(pg_url)
    store.open()
    yield HeldOpen(store)
    store.close()


def _conflicts(api: HeldOpen) -> int:
    store = api.store
    assert isinstance(store, PostgresStore)
    return next(m.value for m in store.metrics() if m.name == _CONFLICTS)


def _running(api: HeldOpen, worker: str, n: int) -> tuple[str, str]:
    """A dequeued rollout with spans, as a runner leaves it: its rollout and attempt ids."""
    api.enqueue_rollouts([{"input": {"n": n}}])
    started = api.dequeue_rollouts(1, worker)[0]
    rollout_id, attempt_id = started["rollout_id"], started["attempt"]["attempt_id"]
    for k in range(2):
        seq = api.next_span_sequence_id(rollout_id, attempt_id)
        api.add_span(span(rollout_id, attempt_id, seq, n * 10 + k + 1))
    return rollout_id, attempt_id


def _history(api: HeldOpen, rollouts: int = 20) -> None:
    """Finished rollouts before the calls under test: their keys share the index pages."""
    for n in range(rollouts):
        rollout_id, attempt_id = _running(api, f"w{n % 4}", 1000 + n)
        api.update_attempt(rollout_id, attempt_id, {"status": "succeeded"})


def _at_once(api: HeldOpen, *calls: Callable[[], Any]) -> list[Any]:
    """The calls on threads of their own, each transaction open until all ran their
    statements; their answers."""
    out: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int, call: Callable[[], Any]) -> None:
        try:
            out[i] = call()
        except BaseException as exc:  # noqa: BLE001 - raised again below
            errors.append(exc)

    api.barrier = threading.Barrier(len(calls))
    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    api.barrier = None
    if errors:
        raise errors[0]
    return out


def test_an_enqueue_and_a_dequeue_at_once_do_not_conflict(api: HeldOpen) -> None:
    """The enqueue writes the queue the dequeue reads; it answers with its rollout from the
    insert, not read back through the primary key's page the dequeue writes to, so the two
    do not conflict both ways."""
    _history(api)
    api.enqueue_rollouts([{"input": {"n": "waiting"}}])
    for attempt in range(3):
        before = _conflicts(api)
        enqueued, dequeued = _at_once(
            api,
            lambda: api.enqueue_rollouts([{"input": {"n": "new"}}]),
            lambda: api.dequeue_rollouts(1, "w-dequeue"),
        )
        assert enqueued[0]["status"] == "queuing" and enqueued[0]["input"] == {"n": "new"}
        assert len(dequeued) == 1 and dequeued[0]["attempt"]["status"] == "preparing"
        assert _conflicts(api) == before, f"try {attempt}"


def test_sequence_ids_asked_at_once_for_two_rollouts_do_not_conflict(
    api: HeldOpen, pg_url: str
) -> None:
    """``spans/next`` of two rollouts at once: each issues an id from its rollout's counter
    up without looking up the ids taken (none is, there), and writes no rollout counter row
    while the attempt is stored, so neither reads an index page the other writes to."""
    _history(api)
    first, second = _running(api, "wa", 1), _running(api, "wb", 2)
    for attempt in range(3):
        before = _conflicts(api)
        got = _at_once(
            api,
            lambda: api.next_span_sequence_id(*first),
            lambda: api.next_span_sequence_id(*second),
        )
        assert _conflicts(api) == before, f"try {attempt}"
        # Still the rollout's next: above every id its attempt holds, and issued.
        for (rollout_id, attempt_id), seq in zip((first, second), got, strict=True):
            held = query(
                pg_url,
                "SELECT MAX(sequence_id) FROM (SELECT sequence_id FROM spans"
                " WHERE rollout_id = %s AND attempt_id = %s UNION ALL SELECT sequence_id"
                " FROM span_issued WHERE rollout_id = %s AND attempt_id = %s) t",
                (rollout_id, attempt_id, rollout_id, attempt_id),
            )[0][0]
            assert held == seq
    assert query(pg_url, "SELECT COUNT(*) FROM agl_span_counters") == [(0,)]


def test_a_rollouts_steps_after_its_dequeue_add_no_index_entries(
    api: HeldOpen, pg_url: str
) -> None:
    """A span's heartbeat, a sequence id and the attempt's outcome change rows about one
    rollout but no indexed column: the rows are updated in place (HOT), with no entry on the
    index pages every other rollout's calls read through."""
    _history(api)
    rollout_id, attempt_id = _running(api, "w", 1)
    execute(pg_url, "CREATE EXTENSION IF NOT EXISTS pageinspect")
    indexes = ("rollouts_pkey", "rollouts_order", "attempts_pkey", "agl_workers_pkey")

    def entries() -> dict[str, int]:
        return {
            index: int(
                query(
                    pg_url,
                    "SELECT COALESCE(SUM(live_items + dead_items), 0) FROM generate_series(1,"
                    " pg_relation_size(%s::regclass) / current_setting('block_size')::int - 1)"
                    " AS b, bt_page_stats(%s, b::int) WHERE type = 'l'",
                    (index, index),
                )[0][0]
            )
            for index in indexes
        }

    before = entries()
    seq = api.next_span_sequence_id(rollout_id, attempt_id)
    api.add_span(span(rollout_id, attempt_id, seq, 99))
    api.update_attempt(rollout_id, attempt_id, {"status": "succeeded"})
    assert api.get_rollout(rollout_id)["status"] == "succeeded"  # type: ignore[index]
    assert entries() == before


def test_the_fleets_watchdog_scan_marks_only_what_it_times_out_read(pg_url: str) -> None:
    """The periodic scan looks for attempts past their deadline in a snapshot, then reads
    again only those in the call's transaction: the running rollouts it passed over are not
    marked read, so their own calls' writes do not conflict with the call that scanned."""
    clock = Clock(1_700_000_000.0)
    store = PostgresStore(pg_url)
    store.open()
    try:
        api = HeldOpen(store, clock=clock, scan_debounce=5.0)
        late = api.start_rollout("late", None, None, {"timeout_seconds": 30}, None, "w")
        running = [
            api.start_rollout(n, None, None, {"timeout_seconds": 3600}, None, f"w{n}")
            for n in range(12)
        ]
        clock.advance(60.0)  # the scan is due, and the first attempt is past its deadline
        marked: list[tuple[Any, ...]] = []
        # The enqueue runs the scan; its transaction, before it commits, shows its marks.
        api.barrier = _Looking(lambda: marked.extend(_marked(pg_url, "rollouts", "attempts")))
        api.enqueue_rollouts([{"input": "next"}])
        api.barrier = None
        assert api.get_latest_attempt(late["rollout_id"])["status"] == "timeout"  # type: ignore[index]
        assert all(
            api.get_latest_attempt(r["rollout_id"])["status"] == "preparing"  # type: ignore[index]
            for r in running
        )
        # No page of the rollouts and attempts tables, nor a whole table: at most the tuples
        # of the rollout timed out (those it wrote itself are not marked).
        assert [m for m in marked if m[1] != "tuple"] == []
        assert {m[0] for m in marked} <= {"rollouts", "attempts"}
        assert len(marked) <= 2, marked
    finally:
        store.close()


class _Looking(threading.Barrier):
    """A barrier of one that, as the transaction waits on it, runs ``look``."""

    def __init__(self, look: Callable[[], None]) -> None:
        super().__init__(1)
        self.look = look

    def wait(self, timeout: float | None = None) -> int:
        self.look()
        return super().wait(timeout)


def _marked(url: str, *tables: str) -> list[tuple[Any, ...]]:
    """The serializable read marks (SIRead locks) held on these tables' rows."""
    return query(
        url,
        "SELECT c.relname, l.locktype, l.page, l.tuple FROM pg_locks l"
        " JOIN pg_class c ON c.oid = l.relation WHERE l.mode = 'SIReadLock'"
        " AND c.relname = ANY(%s)",
        (list(tables),),
    )
