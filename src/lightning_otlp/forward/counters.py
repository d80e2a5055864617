"""The forwarder's counters and last error: the ``forward_state`` table, one row."""

from __future__ import annotations

import sqlite3
from typing import Any, Final

SCHEMA: Final[tuple[str, ...]] = (
    """CREATE TABLE IF NOT EXISTS forward_state (
        id                 INTEGER PRIMARY KEY CHECK (id = 1),
        server             TEXT,
        forwarded_spans    INTEGER NOT NULL DEFAULT 0,
        forwarded_requests INTEGER NOT NULL DEFAULT 0,
        rollouts_created   INTEGER NOT NULL DEFAULT 0,
        rollouts_recreated INTEGER NOT NULL DEFAULT 0,
        status_updates     INTEGER NOT NULL DEFAULT 0,
        last_forward_time  REAL,
        last_error         TEXT,
        last_error_time    REAL
    )""",
    "INSERT OR IGNORE INTO forward_state (id) VALUES (1)",
)

COLUMNS: Final = (
    "server",
    "forwarded_spans",
    "forwarded_requests",
    "rollouts_created",
    "rollouts_recreated",
    "status_updates",
    "last_forward_time",
    "last_error",
    "last_error_time",
)
# The counters ``count`` may add to.
_COUNTERS: Final = frozenset({"rollouts_created", "rollouts_recreated", "status_updates"})

Statement = tuple[str, tuple[Any, ...]]


def count(name: str, n: int = 1) -> Statement:
    """The statement that adds ``n`` to counter ``name``."""
    if name not in _COUNTERS:
        raise ValueError(f"no counter {name!r}")
    return f"UPDATE forward_state SET {name} = {name} + ? WHERE id = 1", (n,)


def error(message: str, now: float) -> Statement:
    """The statement that records the last error (cut to 500 characters)."""
    return (
        "UPDATE forward_state SET last_error = ?, last_error_time = ? WHERE id = 1",
        (message[:500], now),
    )


def server(url: str) -> Statement:
    return "UPDATE forward_state SET server = ? WHERE id = 1", (url,)


def forwarded(spans: int, now: float) -> Statement:
    """The statement that counts one delivered request of ``spans`` spans."""
    return (
        "UPDATE forward_state SET forwarded_spans = forwarded_spans + ?,"
        " forwarded_requests = forwarded_requests + 1, last_forward_time = ? WHERE id = 1",
        (spans, now),
    )


def read(conn: sqlite3.Connection) -> dict[str, Any]:
    """The row by column name; empty when the row is missing."""
    row = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM forward_state WHERE id = 1").fetchone()
    return dict(zip(COLUMNS, row, strict=True)) if row else {}
