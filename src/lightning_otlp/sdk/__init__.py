"""The agent side: stamp the current rollout on every span of an instrumented Python agent.

Needs only the OpenTelemetry SDK: nothing here imports the receiver or its dependencies.
"""

from __future__ import annotations

from .rollout import RolloutIds, RolloutSpanProcessor, current_rollout, emit_reward, rollout

__all__ = ["RolloutIds", "RolloutSpanProcessor", "current_rollout", "emit_reward", "rollout"]
