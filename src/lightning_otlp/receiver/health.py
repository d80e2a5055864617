"""Liveness, readiness and ``/metrics`` on their own port, like the Collector's ``health_check``.

No token is needed here: probes and Prometheus scrapes carry none, and nothing here is secret.
"""

from __future__ import annotations

import json
from typing import Final

from ..asgi import Receive, Scope, Send
from .metrics import CONTENT_TYPE, render
from .pipeline import Pipeline
from .transport.http import respond

READY_PATHS: Final = frozenset({"/", "/health", "/health/ready", "/readyz"})
LIVE_PATHS: Final = frozenset({"/health/live", "/livez"})
METRICS_PATH: Final = "/metrics"


class HealthApp:
    """ASGI app: readiness follows ``Pipeline.ready``; liveness is true while it answers."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if scope["method"] not in ("GET", "HEAD"):
            await respond(
                send, 405, b"GET only\n", "text/plain; charset=utf-8", [(b"allow", b"GET")]
            )
        elif path in READY_PATHS:
            ready = self.pipeline.ready()
            body = {"status": "ready" if ready else "not ready"}
            if self.pipeline.draining:
                body["status"] = "shutting down"
            await respond(
                send, 200 if ready else 503, json.dumps(body).encode(), "application/json"
            )
        elif path in LIVE_PATHS:
            await respond(send, 200, b'{"status": "alive"}', "application/json")
        elif path == METRICS_PATH:
            await respond(send, 200, render(self.pipeline).encode(), CONTENT_TYPE)
        else:
            await respond(send, 404, b"try /health, /health/live or /metrics\n", "text/plain")
