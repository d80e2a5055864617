"""Run agentlightning 0.3.0's stock adapters over span records, in its own environment."""

from __future__ import annotations

from typing import Any

from tests.support import run_in_agl

# TracerTraceToTriplet() with default arguments, as the Trainer uses it, per rollout; and
# TraceToMessages (what prompt optimisation reads) to check messages survive with tool calls.
_ADAPT = r"""
import json, os, sys
from agentlightning.adapter.messages import TraceToMessages
from agentlightning.adapter.triplet import TracerTraceToTriplet
from agentlightning.types import Span
out = {}
for rollout_id, records in json.load(sys.stdin).items():
    spans = [Span.model_validate(r) for r in records]
    triplets = TracerTraceToTriplet().adapt(spans)
    try:
        messages = len(TraceToMessages().adapt(spans))
    except KeyError as exc:  # it needs a role on any span's gen_ai.prompt.{i}
        messages = f"TraceToMessages failed: {exc!r}"
    out[rollout_id] = {
        "triplets": [
            {
                "prompt_text": [m.get("content") for m in (t.prompt.get("raw_content") or [])],
                "response_text": [m.get("content") for m in (t.response.get("raw_content") or [])],
                "tool_calls": [
                    c.get("name")
                    for m in (t.response.get("raw_content") or [])
                    for c in (m.get("tool_calls") or [])
                ],
                "prompt_token_ids": t.prompt.get("token_ids") or [],
                "response_token_ids": t.response.get("token_ids") or [],
                "reward": t.reward,
                "response_id": t.metadata.get("response_id"),
            }
            for t in triplets
        ],
        "messages": messages,
    }
print(json.dumps(out), flush=True)
os._exit(0)  # agentlightning's imports leave threads that can hold the exit up
"""


def adapt(records_by_rollout: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per rollout: its triplets (texts, tool calls, token ids, reward) and message count."""
    result: dict[str, Any] = run_in_agl(_ADAPT, records_by_rollout)
    return result
