"""Stores behind one interface, chosen by URL."""

from __future__ import annotations

from typing import Final

from ..batch import SEQUENCE_IDS
from .affinity import DEFAULT_AFFINITY_WINDOW
from .base import Metric, Store, WriteResult
from .sqlite import SQLiteStore
from .url import StoreURL, parse_store_url

DEFAULT_STORE_URL: Final = "sqlite:///./lightning-otlp.db"

__all__ = [
    "DEFAULT_STORE_URL",
    "Metric",
    "SQLiteStore",
    "Store",
    "StoreURL",
    "WriteResult",
    "open_store",
    "parse_store_url",
]


def open_store(
    url: str,
    *,
    forward: bool = True,
    affinity_window: float = DEFAULT_AFFINITY_WINDOW,
    create: bool = True,
    salvage: bool = False,
    translate: bool = True,
    prepare_reads: bool = True,
    forward_log_wait: float | None = None,
    sequence_ids: str = "start-time",
) -> Store:
    """Make (not yet open) the store a URL names; with ``create`` off, opening a store that
    does not exist yet is an error (read commands create nothing); with ``salvage``, reads skip
    what a damaged file cannot give back (logging each skip) instead of failing.

    ``sqlite:///relative.db``, ``sqlite:////absolute.db`` (``?synchronous=normal`` to trade
    power-loss safety for speed), ``memory://`` for tests, and ``agl+http://HOST:PORT`` to
    forward into a LightningStore server through a local outbox (``?outbox=path.db``);
    ``forward_log_wait`` (seconds, default the forwarder's) is how long a forwarded model call
    waits for its GenAI log records. ``sequence_ids`` (``start-time`` or ``counter``) is how
    spans without an explicit sequence id get one (``batch.SEQUENCE_IDS``).
    """
    parsed = parse_store_url(url)
    if parsed.forwards:
        from ..forward.store import ForwardingStore

        options: dict[str, float] = {}
        if forward_log_wait is not None:
            options["log_wait"] = forward_log_wait
        forwarder = ForwardingStore.from_url(
            parsed,
            forward=forward,
            affinity_window=affinity_window,
            translate=translate,
            **options,
        )
        # Its outbox is a SQLite store like any other: read commands create nothing there either.
        forwarder.outbox.store.create = create
        forwarder.outbox.store.salvage = salvage
        if sequence_ids not in SEQUENCE_IDS:
            raise ValueError(f"sequence_ids must be one of {SEQUENCE_IDS}, not {sequence_ids!r}")
        forwarder.outbox.store.sequence_ids = sequence_ids
        return forwarder
    default = "OFF" if parsed.scheme == "memory" else "FULL"
    return SQLiteStore(
        parsed.path,
        url=url,
        synchronous=parsed.options.get("synchronous", default),
        affinity_window=affinity_window,
        create=create,
        salvage=salvage,
        translate=translate,
        prepare_reads=prepare_reads,
        sequence_ids=sequence_ids,
    )
