"""What ``lightning-otlp status`` reports for a store URL."""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from ..store.url import parse_store_url
from .client import HTTPLightningClient
from .figures import read_status


def store_status(url: str, *, probe: bool = True) -> dict[str, Any]:
    """A forwarder's outbox depth, oldest pending age, counts and errors, plus a server health
    probe.

    Reads the outbox file without taking its write lock and never forwards anything, so it is
    safe (and cheap) beside a running receiver.
    """
    parsed = parse_store_url(url)
    if parsed.server is None:
        raise ValueError(f"{url} is no forwarder's store URL")
    from .store import ForwardingStore

    ForwardingStore.from_url(parsed, forward=False)  # the same checks of its options
    path = os.path.abspath(parsed.path)
    report: dict[str, Any] = {"store": url, "outbox": path}
    if not os.path.exists(path):
        raise ValueError(f"no outbox at {path}: has a receiver with this store URL run here?")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        report.update(read_status(conn))
    except sqlite3.OperationalError as exc:
        raise ValueError(f"{path} is not a lightning-otlp outbox ({exc})") from None
    finally:
        conn.close()
    if probe:
        server = HTTPLightningClient(parsed.server, timeout=3.0)
        try:
            report["server_reachable"] = server.health()
        finally:
            server.close()
    return report
