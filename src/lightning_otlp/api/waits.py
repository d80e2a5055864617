"""``/waits/rollouts``: wait until rollouts finish, woken by commits, never by polling."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response

from . import wire
from .bodies import disconnected, guarded, json_response
from .calls import APICalls
from .wire import Fields

# After a change wakes a wait, it looks again no sooner than this (a burst of commits is one look).
WAIT_SETTLE_SECONDS: Final = 0.1


class WaitRoutes(APICalls):
    """Waits for rollouts to finish, bounded by ``max_wait`` and ended by a client that leaves."""

    async def wait_for_rollouts(self, request: Request) -> Response:
        async def go() -> Response:
            body = wire.body_object(await self.read_json(request), required=True) or {}
            f = Fields(body, "body")
            rollout_ids = f.strings("rollout_ids")
            if rollout_ids is None:
                raise wire.error("missing", ["body", "rollout_ids"], "Field required", None)
            self._batch(len(rollout_ids), "ids in rollout_ids")
            timeout = _wait_seconds(f.number("timeout"), self.limits.max_wait)
            return json_response(await self._wait(request, rollout_ids, timeout))

        return await guarded(go)

    async def _wait(self, request: Request, rollout_ids: list[str], timeout: float) -> Any:
        """Look, then sleep until a commit that may finish one of them (or, for rollout timeouts
        and other receivers' commits, ``wait_recheck``) and look again, until all are finished
        or ``timeout`` passes; a client that leaves ends it."""
        deadline = time.monotonic() + timeout
        wanted = len(set(rollout_ids))
        gone = asyncio.ensure_future(disconnected(request.receive))
        try:
            while True:
                done = await self.call(self.backend.finished_rollouts, rollout_ids)
                left = deadline - time.monotonic()
                if len(done) == wanted or left <= 0:
                    return done
                changed = asyncio.ensure_future(
                    self.changes.wait(min(left, self.limits.wait_recheck), rollout_ids)
                )
                await asyncio.wait({changed, gone}, return_when=asyncio.FIRST_COMPLETED)
                if gone.done():
                    changed.cancel()
                    return done  # nobody reads it; the connection is gone
                await asyncio.sleep(min(WAIT_SETTLE_SECONDS, max(0.0, deadline - time.monotonic())))
        finally:
            gone.cancel()


def _wait_seconds(timeout: float | None, longest: float) -> float:
    """A wait's timeout within ``[0, longest]``: none, NaN or more than ``longest`` wait
    ``longest`` (upstream's client asks again), a negative one looks once."""
    if timeout is None or timeout != timeout or timeout > longest:
        return longest
    return max(0.0, timeout)
