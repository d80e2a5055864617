"""The PostgreSQL store's own storage paths, on a real server: many rows as one statement, and
transactions a concurrent one conflicted with, run again and counted."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from lightning_otlp.store.postgres import PostgresStore

from .postgres import query

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[PostgresStore]:
    store = PostgresStore(pg_url)
    store.open()
    yield store
    store.close()


def _insert_bindings(store: PostgresStore, rows: list[tuple[object, ...]]) -> int:
    with store.transaction() as conn:
        cursor = conn.executemany(
            "INSERT INTO trace_bindings (trace_id, rollout_id, attempt_id, created_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            rows,
        )
        return int(cursor.rowcount)


def test_many_rows_skip_duplicates_as_row_by_row_inserts_do(
    pg_store: PostgresStore, pg_url: str
) -> None:
    assert _insert_bindings(pg_store, [(b"\x01" * 16, "ro-a", "at-a", 1.0)]) == 1
    rows = [
        (b"\x01" * 16, "ro-x", "at-x", 2.0),  # stored already: kept as it was
        (b"\x02" * 16, "ro-b", "at-b", 3),  # an int where the column holds floats
        (b"\x02" * 16, "ro-y", "at-y", 4.0),  # twice in one statement: the first stays
        (b"\x03" * 16, "ro-c", "at-c", 5.5),
    ]
    assert _insert_bindings(pg_store, rows) == 2
    stored = query(
        pg_url, "SELECT trace_id, rollout_id, created_at FROM trace_bindings ORDER BY trace_id"
    )
    assert stored == [
        (b"\x01" * 16, "ro-a", 1.0),
        (b"\x02" * 16, "ro-b", 3.0),
        (b"\x03" * 16, "ro-c", 5.5),
    ]


def test_rows_keep_their_order_and_mixed_values_still_go_in(
    pg_store: PostgresStore, pg_url: str
) -> None:
    logs = [(bytes([n]) * 16, bytes([n]) * 8, bytes([n]), float(n), b"{}") for n in range(5)]
    with pg_store.transaction() as conn:
        conn.executemany(
            "INSERT INTO span_logs (trace_id, span_id, digest, time, record)"
            " VALUES (?, ?, ?, ?, ?)",
            logs,
        )
    ordered = query(pg_url, "SELECT digest FROM span_logs ORDER BY rowid")
    assert [row[0] for row in ordered] == [bytes([n]) for n in range(5)]
    # Values of two types in one text column: not one array, so row by row, as before.
    rows: list[tuple[object, ...]] = [
        (b"\x09" * 16, 7, "at-1", 1.0),
        (b"\x0a" * 16, "ro-z", "at-2", 2.0),
    ]
    assert _insert_bindings(pg_store, rows) == 2
    assert query(pg_url, "SELECT rollout_id FROM trace_bindings ORDER BY trace_id") == [
        ("7",),
        ("ro-z",),
    ]


def test_a_conflicting_transaction_runs_again_and_is_counted(
    pg_store: PostgresStore, pg_url: str
) -> None:
    """Two transactions each read what the other writes (write skew): PostgreSQL aborts one,
    the store runs it again whole, and the counter says so."""
    both_read = threading.Barrier(2, timeout=30)
    errors: list[BaseException] = []

    def write(work: str) -> None:
        tries = 0

        def once() -> None:
            nonlocal tries
            tries += 1
            with pg_store.transaction() as conn:
                conn.execute("SELECT COUNT(*) FROM fleet_work").fetchone()
                if tries == 1:
                    both_read.wait()
                conn.execute("INSERT INTO fleet_work (work, done_at) VALUES (?, 0)", (work,))

        try:
            pg_store.retrying(once)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(name,)) for name in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert query(pg_url, "SELECT work FROM fleet_work ORDER BY work") == [("one",), ("two",)]
    counted = {m.name: m.value for m in pg_store.metrics()}
    assert counted["lightning_otlp_store_conflicts"] >= 1
