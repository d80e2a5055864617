"""lightning-otlp: OpenTelemetry spans from any language into Agent Lightning's LightningStore."""

from __future__ import annotations

from .sdk import RolloutIds, RolloutSpanProcessor, current_rollout, emit_reward, rollout

__version__ = "0.1.0"

__all__ = [
    "RolloutIds",
    "RolloutSpanProcessor",
    "__version__",
    "current_rollout",
    "emit_reward",
    "rollout",
]
