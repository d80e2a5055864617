"""The outbox's figures for ``lightning-otlp status``, read from the file alone (no network)."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from . import counters, mapping, queue
from .waits import log_status


def read_status(conn: sqlite3.Connection, now: float | None = None) -> dict[str, Any]:
    """Depth, oldest pending age, forwarded counts, held calls and the last error."""
    now = time.time() if now is None else now
    spans, size = queue.pending(conn)
    state = counters.read(conn)
    oldest = queue.oldest_pending_time(conn) if spans else None
    return {
        **log_status(conn),
        "server": state.get("server"),
        "pending_spans": spans,
        "pending_bytes": size,
        "oldest_pending_age_seconds": None if oldest is None else round(max(0.0, now - oldest), 3),
        "forwarded_spans": state.get("forwarded_spans", 0),
        "rejected_spans": queue.rejected(conn),
        "forwarded_requests": state.get("forwarded_requests", 0),
        "rollouts_mapped": mapping.mapped(conn),
        "rollouts_created": state.get("rollouts_created", 0),
        "rollouts_recreated": state.get("rollouts_recreated", 0),
        "status_updates": state.get("status_updates", 0),
        "last_forward_time": state.get("last_forward_time"),
        "last_error": state.get("last_error"),
        "last_error_time": state.get("last_error_time"),
    }
