"""Wiring: the store a URL names, its LightningStore API, and the pipeline in front of them.

The one module that knows every backend; it sits above the stores and the forwarder, so no
store imports another kind of store, and a backend joins by adding its branch here.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .defaults import DEFAULT_AFFINITY_WINDOW, SEQUENCE_IDS
from .forward.store import ForwardingStore
from .receiver.pipeline import Pipeline
from .receiver.route import RoutingConfig
from .settings import Settings
from .store.api_store import SQLLightningStore
from .store.base import Served, Store
from .store.lightning import LightningStoreBackend
from .store.postgres import PostgresStore
from .store.postgres_api import PostgresLightningStore
from .store.sqlite import SQLiteStore
from .store.sqlite_api import SQLiteLightningStore
from .store.url import parse_store_url


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
    sequence_ids: str = SEQUENCE_IDS[0],
) -> Store:
    """Make (not yet open) the store a URL names; with ``create`` off, opening a store that
    does not exist yet is an error (read commands create nothing); with ``salvage``, reads skip
    what a damaged file cannot give back (logging each skip) instead of failing.

    ``sqlite:///relative.db``, ``sqlite:////absolute.db`` (``?synchronous=normal`` to trade
    power-loss safety for speed), ``memory://`` for tests, ``postgresql://USER@HOST:PORT/DB``
    for a store many receivers share, and ``agl+http://HOST:PORT`` to
    forward into a LightningStore server through a local outbox (``?outbox=path.db``);
    ``forward_log_wait`` (seconds, default the forwarder's) is how long a forwarded model call
    waits for its GenAI log records. ``sequence_ids`` (``start-time`` or ``counter``) is how
    spans without an explicit sequence id get one (``defaults.SEQUENCE_IDS``).
    """
    parsed = parse_store_url(url)
    if parsed.forwards:
        options: dict[str, float] = {}
        if forward_log_wait is not None:
            options["log_wait"] = forward_log_wait
        forwarder = ForwardingStore.from_url(
            parsed,
            forward=forward,
            affinity_window=affinity_window,
            translate=translate,
            # Its outbox is a SQLite store like any other: read commands create nothing there.
            create=create,
            salvage=salvage,
            sequence_ids=sequence_ids,
            **options,
        )
        return forwarder
    if parsed.scheme == "postgresql":
        return PostgresStore(
            url,
            affinity_window=affinity_window,
            create=create,
            salvage=salvage,
            translate=translate,
            prepare_reads=prepare_reads,
            sequence_ids=sequence_ids,
        )
    default = "OFF" if parsed.scheme == "memory" else "FULL"
    return SQLiteStore(
        parsed.path,
        url=url,
        synchronous=parsed.values.get("synchronous", default),
        affinity_window=affinity_window,
        create=create,
        salvage=salvage,
        translate=translate,
        prepare_reads=prepare_reads,
        sequence_ids=sequence_ids,
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
    store = store or open_store(
        settings.store,
        affinity_window=settings.affinity_window,
        translate=settings.translate,
        prepare_reads=settings.prepare_reads,
        forward_log_wait=settings.forward_log_wait,
        sequence_ids=settings.sequence_ids,
    )
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
