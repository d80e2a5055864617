"""Attribute and span names shared with Agent Lightning (``agentlightning.semconv``)."""

from __future__ import annotations

from typing import Final

ROLLOUT_ID: Final = "agentlightning.rollout_id"
ATTEMPT_ID: Final = "agentlightning.attempt_id"
SPAN_SEQUENCE_ID: Final = "agentlightning.span_sequence_id"

# Written by lightning_otlp.sdk.rollout(); read by the receiver to fill the rollout record.
ROLLOUT_SPAN: Final = "agentlightning.rollout"
# Zero-duration child of the rollout span, exported as the block starts.
ROLLOUT_START_SPAN: Final = "agentlightning.rollout.start"
ROLLOUT_INPUT: Final = "agentlightning.rollout.input"
ROLLOUT_MODE: Final = "agentlightning.rollout.mode"
ATTEMPT_STATUS: Final = "agentlightning.attempt.status"

ANNOTATION_SPAN: Final = "agentlightning.annotation"
REWARD_PREFIX: Final = "agentlightning.reward"
PRIMARY_REWARD_VALUE: Final = "agentlightning.reward.0.value"
