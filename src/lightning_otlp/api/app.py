"""One origin for everything on the OTLP/HTTP port: OTLP, ``/v1/agl`` and the dashboard.

Agent Lightning's client sends OTLP to ``<endpoint>/v1/traces`` and everything else to
``<endpoint>/v1/agl/...``, and its dashboard calls ``/v1/agl`` on the page's own origin, so all
three are served side by side here rather than on separate ports.
"""

from __future__ import annotations

import html
import importlib.util
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Final
from urllib.parse import parse_qs, quote, unquote

from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse
from starlette.staticfiles import StaticFiles

from ..asgi import ASGIApp, Receive, Scope, Send
from ..errors import ReceiverError
from ..receiver.auth import BearerAuth
from ..receiver.budget import MemoryBudget
from ..receiver.transport.http import close_if_unread, headers_of, read_body
from .routes import PREFIX, LightningAPI

_OTLP_PREFIX: Final = "/v1/"
_RECEIVER_PATHS: Final = frozenset({"/health", "/healthz"})
# With auth on, a person signs in to the dashboard here with one of the tokens; the token is
# then kept in an HttpOnly, SameSite=Strict cookie that the dashboard's own API calls carry.
LOGIN_PATH: Final = "/login"
TOKEN_COOKIE: Final = "lightning_otlp_token"
_LOGIN_BODY_LIMIT: Final = 4096
_LOGIN_SECONDS: Final = 10.0
_LOGIN_PAGE: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Agent Lightning dashboard: sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: system-ui, sans-serif; max-width: 30em; margin: 4em auto">
<h1>Sign in</h1>
<p>This receiver requires a token: one of the lines of its <code>--auth-token-file</code>.</p>
{error}
<form method="post" action="/login">
<input type="hidden" name="next" value="{next}">
<label>Token <input type="password" name="token" autocomplete="current-password" autofocus
required></label>
<button type="submit">Sign in</button>
</form></body></html>
"""


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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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
        self._login_budget = MemoryBudget(64 * _LOGIN_BODY_LIMIT)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path == PREFIX or path.startswith(PREFIX + "/"):
                if self.auth is not None and not self._signed_in(scope):
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
            ):
                if self.auth is not None:
                    if path == LOGIN_PATH and scope["method"] == "POST":
                        await self._login(scope, *close_if_unread(scope, receive, send))
                        return
                    if not self._signed_in(scope):  # nothing of the dashboard, not even assets
                        await _login_page(scope, receive, send, _next_path(scope))
                        return
                if scope["method"] in ("GET", "HEAD"):
                    await self.dashboard(scope, receive, send)
                    return
        await self.receiver(scope, receive, send)

    def _signed_in(self, scope: Scope) -> bool:
        """A bearer token in the authorization header, or the dashboard's sign-in cookie."""
        assert self.auth is not None
        if self.auth.allows(_header(scope, b"authorization")):
            return True
        token = _cookie(scope, TOKEN_COOKIE)
        return token is not None and self.auth.allows_token(token.encode("latin-1"))

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The sign-in form's POST: a known token sets the cookie and goes back to the page."""
        assert self.auth is not None
        held = [0]
        try:
            body = await read_body(
                headers_of(scope),
                receive,
                held,
                limit=_LOGIN_BODY_LIMIT,
                budget=self._login_budget,
                timeout=_LOGIN_SECONDS,
            )
        except ReceiverError:
            await _login_page(scope, receive, send, "/", "the sign-in request was refused", 400)
            return
        finally:
            self._login_budget.release(held[0])
        form = parse_qs(body.decode("latin-1"))
        token = (form.get("token") or [""])[0].strip()
        target = _safe_next((form.get("next") or ["/"])[0])
        if not token or not self.auth.allows_token(token.encode("latin-1")):
            await _login_page(scope, receive, send, target, "unknown token", 401)
            return
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        cookie = f"{TOKEN_COOKIE}={quote(token)}; Path=/; HttpOnly; SameSite=Strict{secure}"
        response = PlainTextResponse(
            "signed in", 303, headers={"location": target, "set-cookie": cookie}
        )
        await response(scope, receive, send)


def _cookie(scope: Scope, name: str) -> str | None:
    raw = _header(scope, b"cookie")
    if raw is None:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw.decode("latin-1"))
    except CookieError:
        return None
    morsel = jar.get(name)
    return None if morsel is None else unquote(morsel.value)


def _safe_next(target: str) -> str:
    """Only a path on this origin: the form must not send a person elsewhere."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _next_path(scope: Scope) -> str:
    query = scope.get("query_string", b"").decode("latin-1")
    return _safe_next(scope["path"] + (f"?{query}" if query else ""))


async def _login_page(
    scope: Scope, receive: Receive, send: Send, target: str, error: str = "", status: int = 401
) -> None:
    text = _LOGIN_PAGE.format(
        next=html.escape(target, quote=True),
        error=f'<p role="alert"><strong>{html.escape(error)}</strong></p>' if error else "",
    )
    response = HTMLResponse(text, status, headers={"cache-control": "no-store"})
    await response(scope, *close_if_unread(scope, receive, send))


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value)
    return None


async def _unauthenticated(scope: Scope, receive: Receive, send: Send) -> None:
    response = JSONResponse(
        {"detail": "missing or unknown bearer token"},
        status_code=401,
        headers={"www-authenticate": 'Bearer realm="otlp"'},
    )
    await response(scope, receive, send)


async def _no_api(scope: Scope, receive: Receive, send: Send) -> None:
    response = JSONResponse(
        {
            "detail": "this receiver forwards into another LightningStore; use that store's"
            " /v1/agl API (the LightningStore API is served with the embedded SQLite store)"
        },
        status_code=501,
    )
    await response(scope, receive, send)
