"""agentlightning 0.3.0's client as the conformance scenarios drive it: one server, or several
of one shared store in turn; every answer recorded; spans made the same way on every run.

Imported by the scenarios (``agl_conformance.py``, ``agl_lifecycle.py``) from this folder, which
is on the path when ``agl_conformance.py`` runs as a script.
"""

from __future__ import annotations

import collections
import itertools
import os
import sys
import time
from typing import Any

import aiohttp
from agentlightning.store.client_server import API_V1_AGL_PREFIX, LightningStoreClient
from agentlightning.types import RolloutConfig, Span

RETRY = RolloutConfig(max_attempts=2, retry_condition=["failed", "unresponsive"])


class RoundRobinClient(LightningStoreClient):
    """agentlightning's client, unchanged but for the server each request goes to: the next of
    several, in turn (it reads its address afresh for every request)."""

    # Requests (and OTLP endpoints) per server, over every client: shown in the output.
    sent: collections.Counter[str] = collections.Counter()

    def __init__(self, roots: list[str]) -> None:
        self._next_root = itertools.cycle(roots).__next__
        super().__init__(roots[0], retry_delays=(), health_retry_delays=())

    @property  # type: ignore[override]
    def server_address_root(self) -> str:
        root = self._next_root()
        self.sent[root] += 1
        return root

    @server_address_root.setter
    def server_address_root(self, value: str) -> None:
        pass  # the cycle decides

    @property  # type: ignore[override]
    def server_address(self) -> str:
        return self.server_address_root + API_V1_AGL_PREFIX

    @server_address.setter
    def server_address(self, value: str) -> None:
        pass


def connect(urls: str) -> LightningStoreClient:
    """The client for one server, or for several of one shared store (comma-separated)."""
    roots = [u.rstrip("/") for u in urls.split(",")]
    if len(roots) == 1:
        return LightningStoreClient(roots[0], retry_delays=(), health_retry_delays=())
    return RoundRobinClient(roots)


def dump(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [dump(v) for v in value]
    if isinstance(value, dict):
        return {k: dump(v) for k, v in value.items()}
    return value


class Recorder:
    def __init__(self) -> None:
        self.steps: list[list[Any]] = []
        self.last = time.monotonic()

    def __call__(self, step: str, value: Any) -> Any:
        now = time.monotonic()
        if os.environ.get("CONFORMANCE_TIMES"):
            print(f"{now - self.last:.3f} {step}", file=sys.stderr)
        self.last = now
        self.steps.append([step, dump(value)])
        return value

    async def error(self, step: str, call: Any) -> None:
        """A call that must fail: record the HTTP status (or the exception type) it failed with."""
        try:
            await call
        except aiohttp.ClientResponseError as exc:
            self.steps.append([step, {"status": exc.status}])
        except Exception as exc:  # noqa: BLE001 - the type is what is compared
            self.steps.append([step, {"error": type(exc).__name__}])
        else:
            self.steps.append([step, "no error"])
        self("_timing:" + step, None)
        self.steps.pop()


def span(rollout_id: str, attempt_id: str, seq: int, name: str, n: int) -> Span:
    trace_id = f"{n:032x}"
    return Span.model_validate(
        {
            "rollout_id": rollout_id,
            "attempt_id": attempt_id,
            "sequence_id": seq,
            "trace_id": trace_id,
            "span_id": f"{n:016x}",
            "parent_id": None if n % 2 else f"{n + 1000:016x}",
            "name": name,
            "status": {"status_code": "OK", "description": None},
            "attributes": {"k": n, "list": [1, 2], "text": "é"},
            "events": [{"name": "e", "attributes": {"a": 1}, "timestamp": 1.5}],
            "links": [],
            "start_time": 100.0 + n,
            "end_time": 100.5 + n,
            "context": {
                "trace_id": trace_id,
                "span_id": f"{n:016x}",
                "is_remote": False,
                "trace_state": {},
            },
            "parent": None,
            "resource": {"attributes": {"service.name": "conformance"}, "schema_url": ""},
        }
    )
