"""Agent Lightning's LightningStore REST API (``/v1/agl``) and dashboard beside OTLP/HTTP."""

from __future__ import annotations

from typing import Any

from ..receiver.auth import BearerAuth
from ..receiver.pipeline import Pipeline
from ..wiring import lightning_api
from .app import Dashboard, ReceiverApp, find_dashboard
from .routes import PREFIX, LightningAPI

__all__ = ["PREFIX", "Dashboard", "LightningAPI", "ReceiverApp", "build_http_app", "find_dashboard"]


def build_http_app(
    receiver: Any,
    pipeline: Pipeline,
    *,
    dashboard: str | None = None,
    watchdog_interval: float = 10.0,
    auth: BearerAuth | None = None,
) -> ReceiverApp:
    """The OTLP/HTTP port's app: ``receiver`` plus the API when the store can serve it.

    ``dashboard`` is a directory, ``"auto"`` for the installed agentlightning's, or None.
    """
    api = None
    backend = lightning_api(pipeline.store, watchdog_interval=watchdog_interval)
    if backend is not None:
        api = LightningAPI(backend, pipeline.run)
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
