"""Vercel AI SDK (``ai`` with its ``LegacyOpenTelemetry`` integration) to Agent Lightning's shape.

The model call is the inner ``ai.<fn>.doGenerate`` / ``.doStream`` span (told by ``ai.operationId``,
not its name); the outer ``ai.generateText`` / ``ai.streamText`` spans all its steps and is not a
call, so it is left as it is. Prompt messages are JSON in ``ai.prompt.messages`` (content parts
``text``, ``tool-call``, ``tool-result``), the answer in ``ai.response.text`` /
``ai.response.toolCalls``; a stream needs nothing more, as the SDK writes there the whole text and
tool calls it assembled from the chunks (its timings, ``ai.response.msToFirstChunk`` and the
``ai.stream.*`` events, stay as they are).
The SDK's newer ``OpenTelemetry`` integration follows the GenAI conventions (``otel_genai``).

The SDK records no raw response, so token ids (what the LLM proxy returns from vLLM) survive only
where the agent's provider put them in its metadata: ``ai.response.providerMetadata`` with
``{provider: {"prompt_token_ids": [...], "response_token_ids": [...]}}``, written by an
``@ai-sdk/openai-compatible`` ``metadataExtractor``.
"""

from __future__ import annotations

from typing import Any

from . import names as n
from .call import (
    LlmCall,
    Message,
    TokenIds,
    ToolCall,
    arguments_text,
    as_list,
    as_str,
    as_text,
    loads,
)
from .call import token_ids as _token_ids
from .otel_genai import definitions

# The SDK's finish reasons, spelt as OpenAI's API (and so Agent Lightning's records) spell them.
_FINISH_REASONS = {"tool-calls": "tool_calls", "content-filter": "content_filter"}


def is_vercel(attrs: dict[str, Any]) -> bool:
    return isinstance(attrs.get(n.AI_OPERATION_ID), str)


def is_model_call(attrs: dict[str, Any]) -> bool:
    operation = attrs.get(n.AI_OPERATION_ID)
    return isinstance(operation, str) and operation.endswith(n.AI_MODEL_CALL_SUFFIXES)


def parse(attrs: dict[str, Any]) -> LlmCall:
    call = LlmCall("vercel")
    call.request_model = as_str(attrs.get(n.AI_MODEL_ID))
    call.response_model = as_str(attrs.get(n.AI_RESPONSE_MODEL))
    call.response_id = as_str(attrs.get(n.AI_RESPONSE_ID))
    for raw in as_list(loads(attrs.get(n.AI_PROMPT_MESSAGES))):
        if isinstance(raw, dict):
            call.prompt.extend(_messages(raw))
    tools = attrs.get(n.AI_PROMPT_TOOLS)
    if isinstance(tools, list):
        call.tools = definitions([loads(t) for t in tools])
    answer = Message("assistant", as_str(attrs.get(n.AI_RESPONSE_TEXT)))
    for raw in as_list(loads(attrs.get(n.AI_RESPONSE_TOOL_CALLS))):
        if isinstance(raw, dict):
            answer.tool_calls.append(_tool_call(raw))
    reason = as_str(attrs.get(n.AI_RESPONSE_FINISH_REASON))
    answer.finish_reason = _FINISH_REASONS.get(reason, reason) if reason else None
    if answer.content is not None or answer.tool_calls:
        call.completion = [answer]
    return call


def token_ids(
    attrs: dict[str, Any], prompt: list[int] | None, response: list[int] | None
) -> TokenIds:
    """``prompt`` and ``response``, each filled from the provider metadata where missing."""
    metadata = loads(attrs.get(n.AI_RESPONSE_PROVIDER_METADATA))
    if not isinstance(metadata, dict):
        return TokenIds(prompt, response)
    for entry in metadata.values():
        if isinstance(entry, dict):
            prompt = prompt or _token_ids(entry.get(n.AGL_PROMPT_TOKEN_IDS))
            response = response or _token_ids(entry.get(n.AGL_RESPONSE_TOKEN_IDS))
    return TokenIds(prompt, response)


def _messages(raw: dict[str, Any]) -> list[Message]:
    role = as_str(raw.get("role")) or "user"
    content = raw.get("content")
    if not isinstance(content, list):
        return [Message(role, as_text(content))]
    message = Message(role)
    texts: list[str] = []
    results: list[Message] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "tool-call":
            message.tool_calls.append(_tool_call(part))
        elif kind == "tool-result":
            # OpenAI's layout: one tool message per result.
            results.append(
                Message("tool", _result_text(part), tool_call_id=as_str(part.get("toolCallId")))
            )
    if texts:
        message.content = "".join(texts)
    if results and not texts and not message.tool_calls:
        return results
    return [message, *results]


def _tool_call(raw: dict[str, Any]) -> ToolCall:
    arguments = raw.get("input", raw.get("args"))
    return ToolCall(
        name=str(raw.get("toolName", "")),
        arguments=arguments_text(arguments),
        id=as_str(raw.get("toolCallId")),
    )


def _result_text(part: dict[str, Any]) -> str | None:
    output = part.get("output", part.get("result"))
    if isinstance(output, dict) and "value" in output:
        return as_text(output["value"])
    return as_text(output)
