"""The calls the forwarder makes to a LightningStore server, and their httpx implementation.

Failures come in two kinds the delivery loop tells apart: ``ConnectionError`` (no answer: try
again later) and ``ServerError`` (an answer that is not success, with its HTTP status).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final, Protocol

import httpx

_API: Final = "/v1/agl"
_PROTOBUF: Final = {"content-type": "application/x-protobuf"}
_TRANSPORT_TRIES: Final = 3


class ServerError(Exception):
    """The server answered, but not with success (``status`` is its HTTP status)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class LightningClient(Protocol):
    """What the forwarder needs of a LightningStore server (agentlightning 0.3 REST + OTLP).

    Records are the server's JSON dicts (``AttemptedRollout``, ``Attempt``); every call raises
    ``ConnectionError`` or ``ServerError`` on failure.
    """

    def health(self) -> bool:
        """True when the server answers its health check (never raises)."""
        ...

    def rollouts(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Those of ``ids`` the server knows, as AttemptedRollout dicts."""
        ...

    def recent_rollouts(self, offset: int, limit: int) -> list[dict[str, Any]]:
        """A page of rollouts, newest ``start_time`` first."""
        ...

    def create_rollout(self, body: dict[str, Any]) -> dict[str, Any]:
        """A new rollout with a server-chosen id (and its first attempt); never repeated."""
        ...

    def attempts(self, rollout_id: str) -> list[dict[str, Any]]: ...

    def create_attempt(self, rollout_id: str) -> dict[str, Any]:
        """A new attempt, as the server's AttemptedRollout answer; never repeated."""
        ...

    def update_rollout(self, rollout_id: str, status: str) -> None: ...

    def update_attempt(self, rollout_id: str, attempt_id: str, status: str) -> None: ...

    def export(self, body: bytes) -> None:
        """One OTLP/protobuf ``ExportTraceServiceRequest`` to the server's ``/v1/traces``."""
        ...

    def close(self) -> None: ...


class HTTPLightningClient:
    """``LightningClient`` over HTTP, one pooled httpx client.

    Args:
        base_url: the server's base URL, e.g. ``http://127.0.0.1:4747``.
        timeout: seconds to wait for an answer (connecting: at most 3).
    """

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.base_url, timeout=httpx.Timeout(timeout, connect=3.0)
        )

    def close(self) -> None:
        self._client.close()

    def _call(self, method: str, path: str, *, retry: bool = True, **kwargs: Any) -> httpx.Response:
        """One request; ``retry`` (for repeatable calls) retries at once on a transport error.

        The server drops a connection after a request its handler failed on, so a pooled
        connection may be dead when the next call picks it; the failed one leaves the pool, and
        an immediate retry takes another or a fresh one.
        """
        tries = _TRANSPORT_TRIES if retry else 1
        for attempt in range(1, tries + 1):
            try:
                response = self._client.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt == tries:
                    raise ConnectionError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
                continue
            except httpx.HTTPError as exc:
                raise ConnectionError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
            if response.status_code >= 300:
                raise ServerError(response.status_code, f"{method} {path}: {response.text[:200]}")
            return response
        raise AssertionError("unreachable")

    def health(self) -> bool:
        try:
            return bool(self._call("GET", _API + "/health").json().get("status") == "ok")
        except (ConnectionError, ServerError, ValueError):
            return False

    def rollouts(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        wanted = sorted(set(ids))
        if not wanted:
            return {}
        items = self._call("GET", _API + "/rollouts", params={"rollout_id_in": wanted}).json()
        return {r["rollout_id"]: r for r in items.get("items", []) if r["rollout_id"] in wanted}

    def recent_rollouts(self, offset: int, limit: int) -> list[dict[str, Any]]:
        params = {"sort_by": "start_time", "sort_order": "desc", "limit": limit, "offset": offset}
        items: list[dict[str, Any]] = (
            self._call("GET", _API + "/rollouts", params=params).json().get("items", [])
        )
        return items

    def create_rollout(self, body: dict[str, Any]) -> dict[str, Any]:
        # Not repeated blindly: a second POST could make a second rollout (see the delivery's
        # ``link``).
        created: dict[str, Any] = self._call(
            "POST", _API + "/rollouts", retry=False, json=body
        ).json()
        return created

    def attempts(self, rollout_id: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = (
            self._call("GET", f"{_API}/rollouts/{rollout_id}/attempts").json().get("items", [])
        )
        return items

    def create_attempt(self, rollout_id: str) -> dict[str, Any]:
        created: dict[str, Any] = self._call(
            "POST", f"{_API}/rollouts/{rollout_id}/attempts", retry=False, json={}
        ).json()
        return created

    def update_rollout(self, rollout_id: str, status: str) -> None:
        self._call("POST", f"{_API}/rollouts/{rollout_id}", json={"status": status})

    def update_attempt(self, rollout_id: str, attempt_id: str, status: str) -> None:
        self._call(
            "POST", f"{_API}/rollouts/{rollout_id}/attempts/{attempt_id}", json={"status": status}
        )

    def export(self, body: bytes) -> None:
        self._call("POST", "/v1/traces", content=body, headers=_PROTOBUF)
