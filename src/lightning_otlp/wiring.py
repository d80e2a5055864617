"""Wiring: the store a URL names, its LightningStore API, and the pipeline in front of them.

The one module that knows every backend; it sits above the stores and the forwarder, so no
store imports another kind of store, and a backend joins by adding its branch here.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .forward.store import ForwardingStore
from .receiver.pipeline import Pipeline
from .receiver.route import RoutingConfig
from .settings import Settings
from .store.api_store import SQLLightningStore
from .store.base import DEFAULT_OPTIONS, Served, Store, StoreOptions
from .store.lightning import LightningStoreBackend
from .store.postgres import PostgresStore
from .store.postgres_api import PostgresLightningStore
from .store.sqlite import SQLiteStore
from .store.sqlite_api import SQLiteLightningStore
from .store.url import parse_store_url


def open_store(
    url: str,
    options: StoreOptions = DEFAULT_OPTIONS,
    *,
    forward: bool = True,
    forward_log_wait: float | None = None,
) -> Store:
    """Make (not yet open) the store a URL names, with the options every store takes
    (``StoreOptions``: with ``create`` off, opening a store that does not exist yet is an error,
    as read commands create nothing; with ``salvage``, reads skip what a damaged store cannot
    give back, logging each skip, instead of failing).

    ``sqlite:///relative.db``, ``sqlite:////absolute.db`` (``?synchronous=normal`` to trade
    power-loss safety for speed), ``memory://`` for tests, ``postgresql://USER@HOST:PORT/DB``
    for a store many receivers share, and ``agl+http://HOST:PORT`` to forward into a
    LightningStore server through a local outbox (``?outbox=path.db``); ``forward`` off opens a
    forwarder's outbox without delivering it; ``forward_log_wait`` (seconds, default the
    forwarder's) is how long a forwarded model call waits for its GenAI log records.
    """
    parsed = parse_store_url(url)
    if parsed.forwards:
        extra: dict[str, float] = {}
        if forward_log_wait is not None:
            extra["log_wait"] = forward_log_wait
        # Its outbox is a SQLite store like any other: read commands create nothing there.
        return ForwardingStore.from_url(parsed, options, forward=forward, **extra)
    if parsed.scheme == "postgresql":
        return PostgresStore(url, options)
    default = "OFF" if parsed.scheme == "memory" else "FULL"
    return SQLiteStore(
        parsed.path, options, url=url, synchronous=parsed.values.get("synchronous", default)
    )


def lightning_api(
    store: Served, *, watchdog_interval: float = 10.0, clock: Callable[[], float] = time.time
) -> LightningStoreBackend | None:
    """Agent Lightning's LightningStore API over an opened store (served at ``/v1/agl``), opened;
    None when the LightningStore is elsewhere (a forwarder's is the server it feeds). ``clock``
    is the time the API reads (deadlines, start and end times)."""
    backend: SQLLightningStore
    if isinstance(store, SQLiteStore):
        backend = SQLiteLightningStore(store, scan_debounce=watchdog_interval, clock=clock)
    elif isinstance(store, PostgresStore):
        backend = PostgresLightningStore(store, scan_debounce=watchdog_interval, clock=clock)
    else:
        return None
    backend.open()
    return backend


def build_pipeline(settings: Settings, store: Store | None = None) -> Pipeline:
    options = StoreOptions(
        affinity_window=settings.affinity_window,
        translate=settings.translate,
        prepare_reads=settings.prepare_reads,
        sequence_ids=settings.sequence_ids,
    )
    store = store or open_store(settings.store, options, forward_log_wait=settings.forward_log_wait)
    store.open()
    routing = RoutingConfig(
        rollout_keys=settings.rollout_keys,
        fallback=settings.fallback,  # type: ignore[arg-type]
        finalize_on_root=settings.finalize_on_root,
    )
    return Pipeline(
        store,
        routing,
        max_request_bytes=settings.max_request_bytes,
        max_in_flight=settings.max_in_flight,
        max_request_memory=settings.max_request_memory,
    )
