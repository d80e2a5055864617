"""Choose a translator by what a span carries, and build the translated record.

A span is a model call when it says so in any convention: ``gen_ai.operation.name`` a chat
operation (or, without one, GenAI message content), ``llm.request.type`` chat or completion,
``openinference.span.kind = LLM``, or a Vercel ``ai.*.doGenerate`` / ``doStream`` operation.
Embeddings, tools, agents and plain HTTP spans are left alone, and so are spans already in Agent
Lightning's shape (its tracer's ``openai.chat.completion``, its LLM proxy's spans).
"""

from __future__ import annotations

import re
from typing import Any, Final

from . import names as n
from . import openinference, openllmetry, otel_genai, vercel
from .call import LlmCall, agl_attributes, loads, token_ids, vllm_token_ids

# TracerTraceToTriplet's default llm_call_match: spans it already treats as model calls.
_AGL_MATCH: Final = re.compile(r"openai\.chat\.completion")
# Exact keys that break the adapter's unflattening of these prefixes on a model-call span.
_PREFIX_KEYS: Final = (n.AGL_PROMPT, n.AGL_COMPLETION, n.AGL_REQUEST, n.AGL_RESPONSE)


def model_call(record: dict[str, Any]) -> LlmCall | None:
    """The model call a span record describes, or None when it is not one (or needs nothing)."""
    name = record.get("name") or ""
    if _AGL_MATCH.search(name) or name in n.AGL_PROXY_SPANS:
        return None
    attrs: dict[str, Any] = record.get("attributes") or {}
    events: list[dict[str, Any]] = record.get("events") or []
    if vercel.is_vercel(attrs):
        return vercel.parse(attrs) if vercel.is_model_call(attrs) else None
    kind = attrs.get(n.OI_SPAN_KIND)
    if kind is not None:
        return openinference.parse(attrs) if kind == n.OI_LLM_KIND else None
    operation = attrs.get(n.GENAI_OPERATION)
    request_type = attrs.get(n.LLM_REQUEST_TYPE)
    if operation is not None:
        chat = operation in n.GENAI_CHAT_OPERATIONS
    elif request_type is not None:
        chat = request_type in n.LLM_CHAT_REQUEST_TYPES
    else:
        chat = _has_genai_content(attrs, events)
    if not chat:
        return None
    if openllmetry.has_indexed_content(attrs) and n.GENAI_INPUT_MESSAGES not in attrs:
        return openllmetry.parse(attrs)
    convention = "openllmetry" if request_type is not None else "otel_genai"
    return otel_genai.parse(attrs, events, convention)


def awaits_logs(record: dict[str, Any]) -> bool:
    """A model call with no messages on the span: the GenAI conventions' default sends them as
    log records, which the span may arrive before or after."""
    name = record.get("name") or ""
    if _AGL_MATCH.search(name) or name in n.AGL_PROXY_SPANS:
        return False
    attrs: dict[str, Any] = record.get("attributes") or {}
    if vercel.is_vercel(attrs) or n.OI_SPAN_KIND in attrs:
        return False
    operation = attrs.get(n.GENAI_OPERATION)
    if operation is not None:
        chat = operation in n.GENAI_CHAT_OPERATIONS
    else:
        chat = attrs.get(n.LLM_REQUEST_TYPE) in n.LLM_CHAT_REQUEST_TYPES
    return chat and not _has_genai_content(attrs, record.get("events") or [])


def _has_genai_content(attrs: dict[str, Any], events: list[dict[str, Any]]) -> bool:
    if n.GENAI_INPUT_MESSAGES in attrs or n.GENAI_OUTPUT_MESSAGES in attrs:
        return True
    if openllmetry.has_indexed_content(attrs):
        return True
    return any(
        e.get("name") in n.GENAI_MESSAGE_EVENTS
        or e.get("name") in (n.GENAI_CHOICE_EVENT, n.GENAI_OPERATION_DETAILS_EVENT)
        or e.get("name") in (n.GENAI_PROMPT_EVENT, n.GENAI_COMPLETION_EVENT)
        for e in events
    )


def raw_token_ids(attrs: dict[str, Any]) -> tuple[list[int] | None, list[int] | None]:
    """Token ids the span already carries, that a raw response attribute kept (vLLM's), or
    that a Vercel agent kept in its provider metadata."""
    prompt = token_ids(attrs.get(n.AGL_PROMPT_TOKEN_IDS))
    response = token_ids(attrs.get(n.AGL_RESPONSE_TOKEN_IDS))
    if prompt and response:
        return prompt, response
    prompt, response = vercel.token_ids(attrs, prompt, response)
    for key in n.RAW_RESPONSE_ATTRIBUTES:
        value = attrs.get(key)
        # A cheap test before parsing: most raw responses carry no token ids.
        if isinstance(value, str) and n.VLLM_CHOICE_TOKEN_IDS in value:
            raw_prompt, raw_response = vllm_token_ids(loads(value))
            prompt = prompt or raw_prompt
            response = response or raw_response
    return prompt, response


def translate(record: dict[str, Any]) -> dict[str, Any]:
    """The record in Agent Lightning's shape if it is a model call; otherwise the record itself.

    Only adds: the original name goes to ``lightning_otlp.original_name``, every original
    attribute stays (the few whose key equals an adapter prefix move under
    ``lightning_otlp.original.``), and Agent Lightning's attributes are written over them.
    """
    call = model_call(record)
    if call is None:
        return record
    attrs: dict[str, Any] = record.get("attributes") or {}
    call.prompt_token_ids, call.response_token_ids = raw_token_ids(attrs)
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        out[n.MOVED_PREFIX + key if key in _PREFIX_KEYS else key] = value
    out.update(agl_attributes(call))
    out[n.ORIGINAL_NAME] = record.get("name")
    out[n.TRANSLATED_FROM] = call.convention
    translated = dict(record)
    translated["name"] = n.AGL_LLM_CALL_NAME
    translated["attributes"] = out
    return translated
