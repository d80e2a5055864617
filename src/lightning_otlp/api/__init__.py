"""Agent Lightning's LightningStore REST API (``/v1/agl``) and dashboard beside OTLP/HTTP."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from ..receiver.auth import BearerAuth
from ..receiver.pipeline import Pipeline
from ..wiring import lightning_api
from .app import Dashboard, ReceiverApp, find_dashboard
from .calls import APILimits
from .routes import PREFIX, LightningAPI

__all__ = [
    "PREFIX",
    "APILimits",
    "Dashboard",
    "LightningAPI",
    "ReceiverApp",
    "build_http_app",
    "find_dashboard",
]


def build_http_app(
    receiver: Any,
    pipeline: Pipeline,
    *,
    dashboard: str | None = None,
    watchdog_interval: float = 10.0,
    auth: BearerAuth | None = None,
    limits: APILimits | None = None,
    clock: Callable[[], float] = time.time,
) -> ReceiverApp:
    """The OTLP/HTTP port's app: ``receiver`` plus the API when the store can serve it.

    ``dashboard`` is a directory, ``"auto"`` for the installed agentlightning's, or None;
    ``clock`` is the time the API reads (``wiring.lightning_api``).
    """
    api = None
    backend = lightning_api(pipeline.store, watchdog_interval=watchdog_interval, clock=clock)
    if backend is not None:
        limits = limits or APILimits(max_request_bytes=pipeline.max_request_bytes)
        api = LightningAPI(
            backend,
            # API writes have a thread of their own: they never queue behind ingest's commits.
            functools.partial(pipeline.run, kind="api", stage="api"),
            limits=limits,
            budget=pipeline.budget,
            changes=pipeline.changes,
        )
    app = None
    if dashboard:
        directory = find_dashboard(None if dashboard == "auto" else dashboard)
        if directory is None:
            raise ValueError(
                "--dashboard: agentlightning is not installed here; give the directory of its"
                " dashboard (site-packages/agentlightning/dashboard)"
            )
        app = Dashboard(directory)
    return ReceiverApp(receiver, api, app, auth)
