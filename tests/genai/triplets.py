"""Run agentlightning 0.3.0's stock adapters over span records, in its own environment."""

from __future__ import annotations

from typing import Any

from tests.support import run_in_agl

# TracerTraceToTriplet() with default arguments, as the Trainer uses it, per rollout; and
# TraceToMessages (what prompt optimisation reads) to check messages survive with tool calls.
_ADAPT_SPANS = r"""
import json, os, sys
from agentlightning.adapter.messages import TraceToMessages
from agentlightning.adapter.triplet import TracerTraceToTriplet
from agentlightning.types import Span
out = {}
for rollout_id, spans in spans_by_rollout.items():
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


_FROM_RECORDS = r"""
import json, sys
from agentlightning.types import Span
spans_by_rollout = {
    rollout_id: [Span.model_validate(r) for r in records]
    for rollout_id, records in json.load(sys.stdin).items()
}
"""

# What a trainer does: LightningStoreClient.query_spans from the server, per rollout.
_FROM_SERVER = r"""
import asyncio, json, sys
from agentlightning.store.client_server import LightningStoreClient
asked = json.load(sys.stdin)
async def read():
    client = LightningStoreClient(asked["url"])
    try:
        return {r: list(await client.query_spans(r)) for r in asked["rollouts"]}
    finally:
        await client.close()
spans_by_rollout = asyncio.run(read())
"""


def adapt(records_by_rollout: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per rollout: its triplets (texts, tool calls, token ids, reward) and message count."""
    result: dict[str, Any] = run_in_agl(_FROM_RECORDS + _ADAPT_SPANS, records_by_rollout)
    return result


def adapt_from_server(url: str, rollout_ids: list[str]) -> dict[str, Any]:
    """``adapt`` over the spans a LightningStore server at ``url`` gives its own client."""
    payload = {"url": url, "rollouts": rollout_ids}
    result: dict[str, Any] = run_in_agl(_FROM_SERVER + _ADAPT_SPANS, payload)
    return result
