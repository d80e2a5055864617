"""``/v1/agl``: agentlightning 0.3.0's LightningStore REST API, route for route.

The routes table below is the API's table of contents; the handlers live with their kind
(``rollouts``, ``workers``, ``spans``, ``waits``). Each parses, calls the backend on the
receiver's API write thread (``calls``), and encodes (``bodies``): the backend owns every rule.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Final

from starlette.routing import Route, Router

from ..receiver.transport.http import close_if_unread
from .calls import HELD, APILimits
from .rollouts import RolloutRoutes
from .spans import SpanRoutes
from .waits import WaitRoutes
from .workers import WorkerRoutes

__all__ = ["PREFIX", "APILimits", "LightningAPI"]

PREFIX: Final = "/v1/agl"


class LightningAPI(RolloutRoutes, WorkerRoutes, SpanRoutes, WaitRoutes):
    """The ``/v1/agl`` routes over one backend (arguments: ``api.calls.APICalls``'s)."""

    @cached_property
    def router(self) -> Router:
        return Router(routes=self.routes())

    def routes(self) -> list[Route]:
        b = self.backend
        return [
            Route("/health", self.health, methods=["GET"]),
            Route("/queues/rollouts/enqueue", self.enqueue, methods=["POST"]),
            Route("/queues/rollouts/dequeue", self.dequeue, methods=["POST"]),
            Route("/rollouts", self.start_rollout, methods=["POST"]),
            Route("/rollouts", self.query_rollouts, methods=["GET"]),
            Route("/rollouts/search", self.search_rollouts, methods=["POST"]),
            Route(
                "/rollouts/{rollout_id}",
                self.path_call(b.get_rollout, "rollout_id"),
                methods=["GET"],
            ),
            Route("/rollouts/{rollout_id}", self.update_rollout, methods=["POST"]),
            Route("/rollouts/{rollout_id}/attempts", self.start_attempt, methods=["POST"]),
            Route("/rollouts/{rollout_id}/attempts/search", self.search_attempts, methods=["POST"]),
            Route(
                "/rollouts/{rollout_id}/attempts/{attempt_id}",
                self.update_attempt,
                methods=["POST"],
            ),
            Route("/workers", self.query_workers, methods=["GET"]),
            Route("/workers/search", self.search_workers, methods=["POST"]),
            Route(
                "/workers/{worker_id}", self.path_call(b.get_worker, "worker_id"), methods=["GET"]
            ),
            Route("/workers/{worker_id}", self.update_worker, methods=["POST"]),
            Route("/statistics", self.statistics, methods=["GET"]),
            Route("/rollouts/{rollout_id}/attempts", self.query_attempts, methods=["GET"]),
            Route(
                "/rollouts/{rollout_id}/attempts/latest",
                self.path_call(b.get_latest_attempt, "rollout_id"),
                methods=["GET"],
            ),
            Route("/resources", self.query_resources, methods=["GET"]),
            Route("/resources", self.add_resources, methods=["POST"]),
            Route("/resources/latest", self.latest_resources, methods=["GET"]),
            Route("/resources/{resources_id}", self.update_resources, methods=["POST"]),
            Route(
                "/resources/{resources_id}",
                self.path_call(b.get_resources, "resources_id"),
                methods=["GET"],
            ),
            Route("/spans", self.add_span, methods=["POST"]),
            Route("/spans", self.query_spans, methods=["GET"]),
            Route("/spans/search", self.search_spans, methods=["POST"]),
            Route("/spans/next", self.next_sequence_id, methods=["POST"]),
            Route("/waits/rollouts", self.wait_for_rollouts, methods=["POST"]),
        ]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Serve a request whose path starts with ``/v1/agl``."""
        scope = dict(scope)
        scope["root_path"] = scope.get("root_path", "") + PREFIX
        scope["path"] = scope["path"][len(PREFIX) :] or "/"
        held = [0]  # request memory budget this request's body holds, released when answered
        scope[HELD] = held
        receive, send = close_if_unread(scope, receive, send)
        try:
            await self.router(scope, receive, send)
        finally:
            self.budget.release(held[0])
