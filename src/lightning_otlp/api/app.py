"""One origin for everything on the OTLP/HTTP port: OTLP, ``/v1/agl`` and the dashboard.

Agent Lightning's client sends OTLP to ``<endpoint>/v1/traces`` and everything else to
``<endpoint>/v1/agl/...``, and its dashboard calls ``/v1/agl`` on the page's own origin, so all
three are served side by side here rather than on separate ports.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Final

from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse
from starlette.staticfiles import StaticFiles

from ..receiver.auth import BearerAuth
from ..receiver.transport.http import close_if_unread
from .routes import PREFIX, LightningAPI

Scope = dict[str, Any]
ASGIApp = Any

_OTLP_PREFIX: Final = "/v1/"
_RECEIVER_PATHS: Final = frozenset({"/health", "/healthz"})


def find_dashboard(path: str | None = None) -> Path | None:
    """The dashboard's directory: ``path`` if given, else the installed agentlightning's own.

    Raises ``ValueError`` when ``path`` is given but holds no built dashboard.
    """
    if path:
        candidate = Path(path)
        if (candidate / "agentlightning" / "dashboard" / "index.html").is_file():
            candidate = candidate / "agentlightning" / "dashboard"
        if not (candidate / "index.html").is_file() or not (candidate / "assets").is_dir():
            raise ValueError(
                f"no Agent Lightning dashboard at {path}: expected index.html and assets/ (the"
                " `agentlightning/dashboard` directory of an installed agentlightning 0.3)"
            )
        return candidate
    spec = importlib.util.find_spec("agentlightning")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "dashboard"
        if (candidate / "index.html").is_file():
            return candidate
    return None


class Dashboard:
    """The dashboard's static single-page app: ``/assets/*`` as files, any other page its index."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.index = directory / "index.html"
        self.assets = StaticFiles(directory=directory / "assets")

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        path = scope["path"]
        if path.startswith("/assets/"):
            inner = dict(scope)
            inner["path"] = path[len("/assets") :]
            inner["root_path"] = scope.get("root_path", "") + "/assets"
            try:
                await self.assets(inner, receive, send)
            except HTTPException as exc:  # StaticFiles' "not found" outside a Starlette app
                await PlainTextResponse(str(exc.detail), exc.status_code)(scope, receive, send)
            return
        await FileResponse(self.index)(scope, receive, send)


class ReceiverApp:
    """Route by path: ``/v1/agl`` to the API, other ``/v1`` and health paths to the OTLP
    receiver, anything else to the dashboard (when one is served)."""

    def __init__(
        self,
        receiver: ASGIApp,
        api: LightningAPI | None,
        dashboard: Dashboard | None = None,
        auth: BearerAuth | None = None,
    ) -> None:
        self.receiver = receiver
        self.api = api
        self.dashboard = dashboard
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path == PREFIX or path.startswith(PREFIX + "/"):
                if self.auth is not None and not self.auth.allows(_header(scope, b"authorization")):
                    # The API writes the store: the same tokens as OTLP guard it. The body is
                    # not read: the connection closes after the answer.
                    await _unauthenticated(scope, *close_if_unread(scope, receive, send))
                elif self.api is None:
                    await _no_api(scope, receive, send)
                else:
                    await self.api(scope, receive, send)
                return
            if (
                self.dashboard is not None
                and not path.startswith(_OTLP_PREFIX)
                and path not in _RECEIVER_PATHS
                and scope["method"] in ("GET", "HEAD")
            ):
                await self.dashboard(scope, receive, send)
                return
        await self.receiver(scope, receive, send)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value)
    return None


async def _unauthenticated(scope: Scope, receive: Any, send: Any) -> None:
    response = JSONResponse(
        {"detail": "missing or unknown bearer token"},
        status_code=401,
        headers={"www-authenticate": 'Bearer realm="otlp"'},
    )
    await response(scope, receive, send)


async def _no_api(scope: Scope, receive: Any, send: Any) -> None:
    response = JSONResponse(
        {
            "detail": "this receiver forwards into another LightningStore; use that store's"
            " /v1/agl API (the LightningStore API is served with the embedded SQLite store)"
        },
        status_code=501,
    )
    await response(scope, receive, send)
