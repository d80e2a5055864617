"""Stores behind one interface, chosen by URL."""

from __future__ import annotations

from typing import Final
from urllib.parse import parse_qs, urlsplit

from .affinity import DEFAULT_AFFINITY_WINDOW
from .base import Metric, Store, WriteResult
from .sqlite import SQLiteStore

DEFAULT_STORE_URL: Final = "sqlite:///./lightning-otlp.db"

__all__ = ["DEFAULT_STORE_URL", "Metric", "SQLiteStore", "Store", "WriteResult", "open_store"]


def open_store(
    url: str, *, forward: bool = True, affinity_window: float = DEFAULT_AFFINITY_WINDOW
) -> Store:
    """Make (not yet open) the store a URL names.

    ``sqlite:///relative.db``, ``sqlite:////absolute.db`` (``?synchronous=normal`` to trade
    power-loss safety for speed), ``memory://`` for tests, and ``agl+http://HOST:PORT`` to
    forward into a LightningStore server through a local outbox (``?outbox=path.db``).
    """
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if parts.scheme == "memory":
        return SQLiteStore(
            ":memory:",
            url=url,
            synchronous=query.get("synchronous", "OFF"),
            affinity_window=affinity_window,
        )
    if parts.scheme == "sqlite":
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if parts.netloc:
            path = parts.netloc + "/" + path
        if not path:
            raise ValueError(f"store URL {url!r} names no file (try sqlite:///lightning-otlp.db)")
        return SQLiteStore(
            path,
            url=url,
            synchronous=query.get("synchronous", "FULL"),
            affinity_window=affinity_window,
        )
    if parts.scheme in ("agl+http", "agl+https"):
        from ..forward.store import forwarding_store

        return forwarding_store(url, forward=forward, affinity_window=affinity_window)
    raise ValueError(
        f"unknown store URL {url!r}: use sqlite:///path/to/file.db, memory:// or"
        " agl+http://HOST:PORT (a LightningStore server)"
    )
