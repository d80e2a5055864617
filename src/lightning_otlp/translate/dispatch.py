"""Choose a translator by what a span carries, and build the translated record.

A span is a model call when it says so in any convention: ``gen_ai.operation.name`` a chat
operation (or, without one, GenAI message content), ``llm.request.type`` chat or completion,
``openinference.span.kind = LLM``, a Vercel ``ai.*.doGenerate`` / ``doStream`` operation, or
LiteLLM's raw request span. Embeddings, tools, agents and plain HTTP spans are left alone, and so
are spans already in Agent Lightning's shape (its tracer's ``openai.chat.completion``, its LLM
proxy's spans, told by their resource, not their name).

A span is a call by what it is, not by what was written onto it: the rollout span never is
(LiteLLM writes each call's summary onto the current span), nor is any span that encloses model
calls (a user's "step" span around LiteLLM calls gets the same summary; its per-call children are
the calls). Whether a span encloses calls depends on other spans, which may arrive in later
requests: the store records it as they arrive (``encloses_call``) and every reader passes it in.
A span that carries neither a prompt nor a response (nor token ids) is not a call either: it
would be an empty triplet. A failed call
with a prompt stays a call, as Agent Lightning's own tracer records one: the prompt, no
response, the span's ERROR status kept, so a reward given after it lands on it and not on the
call before, and a trainer can drop it by its status.
"""

from __future__ import annotations

import re
from typing import Any, Final

from . import litellm, openinference, openllmetry, otel_genai, vercel
from . import names as n
from .call import LlmCall, Message, TokenIds, agl_attributes, loads, token_ids, vllm_token_ids

# TracerTraceToTriplet's default llm_call_match: spans it already treats as model calls.
_AGL_MATCH: Final = re.compile(r"openai\.chat\.completion")
# Exact keys that break the adapter's unflattening of these prefixes on a model-call span.
_PREFIX_KEYS: Final = (n.AGL_PROMPT, n.AGL_COMPLETION, n.AGL_REQUEST, n.AGL_RESPONSE)


def model_call(record: dict[str, Any], encloses_calls: bool = False) -> LlmCall | None:
    """The model call a span record describes, or None when it is not one (or needs nothing).

    ``encloses_calls``: the span has model-call children, so it is not one itself."""
    if encloses_calls or not is_candidate(record):
        return None
    attrs: dict[str, Any] = record.get("attributes") or {}
    call = _parse(attrs, record.get("events") or [])
    if call is None:
        return None
    prompt, response = raw_token_ids(attrs)
    call.prompt_token_ids = call.prompt_token_ids or prompt
    call.response_token_ids = call.response_token_ids or response
    if not (_said(call.prompt) or _said(call.completion)):
        if not (call.prompt_token_ids or call.response_token_ids):
            return None
    return call


def _said(messages: list[Message]) -> bool:
    """Any message with something in it: a role alone is no prompt and no response."""
    return any(m.content or m.tool_calls or m.tool_call_id for m in messages)


def is_candidate(record: dict[str, Any]) -> bool:
    """False for spans that are never translated, whatever they carry: Agent Lightning's own
    model calls, its LLM proxy's spans, the rollout span and LiteLLM's summary span (its raw
    request child is the call)."""
    name = record.get("name") or ""
    if _AGL_MATCH.search(name) or name in (n.AGL_ROLLOUT_SPAN, n.LITELLM_SUMMARY_SPAN):
        return False
    return name not in n.AGL_PROXY_SPANS or not is_proxy_resource(record.get("resource"))


def is_proxy_resource(resource: Any) -> bool:
    """Agent Lightning's LLM proxy stamps its spans' resource with the request's sequence id;
    LiteLLM in an agent's own process (same span names) does not."""
    attrs = resource.get("attributes") if isinstance(resource, dict) else None
    return isinstance(attrs, dict) and n.AGL_PROXY_RESOURCE_MARK in attrs


def _convention(attrs: dict[str, Any], events: list[dict[str, Any]]) -> str | None:
    """The convention a span describes a model call in, by its kind alone (not its content),
    or None when it describes none."""
    if litellm.provider(attrs) is not None:
        return "litellm"
    if vercel.is_vercel(attrs):
        return "vercel" if vercel.is_model_call(attrs) else None
    kind = attrs.get(n.OI_SPAN_KIND)
    if kind is not None:
        return "openinference" if kind == n.OI_LLM_KIND else None
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
    if n.GENAI_INPUT_MESSAGES not in attrs and openllmetry.has_indexed_content(attrs):
        return "openllmetry_indexed"
    return "openllmetry" if request_type is not None else "otel_genai"


def _parse(attrs: dict[str, Any], events: list[dict[str, Any]]) -> LlmCall | None:
    convention = _convention(attrs, events)
    if convention == "litellm":
        prefix = litellm.provider(attrs)
        return litellm.parse(attrs, prefix) if prefix is not None else None
    if convention == "vercel":
        return vercel.parse(attrs)
    if convention == "openinference":
        return openinference.parse(attrs)
    if convention == "openllmetry_indexed":
        return openllmetry.parse(attrs)
    if convention is None:
        return None
    return otel_genai.parse(attrs, events, convention)


def awaits_logs(record: dict[str, Any]) -> bool:
    """A model call with no messages on the span: the GenAI conventions' default sends them as
    log records, which the span may arrive before or after."""
    if not is_candidate(record):
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


def raw_token_ids(attrs: dict[str, Any]) -> TokenIds:
    """Token ids the span already carries, that a raw response attribute kept (vLLM's), or
    that a Vercel agent kept in its provider metadata."""
    prompt = token_ids(attrs.get(n.AGL_PROMPT_TOKEN_IDS))
    response = token_ids(attrs.get(n.AGL_RESPONSE_TOKEN_IDS))
    if prompt and response:
        return TokenIds(prompt, response)
    prompt, response = vercel.token_ids(attrs, prompt, response)
    for key in n.RAW_RESPONSE_ATTRIBUTES:
        value = attrs.get(key)
        # A cheap test before parsing: most raw responses carry no token ids.
        if isinstance(value, str) and n.VLLM_CHOICE_TOKEN_IDS in value:
            raw_prompt, raw_response = vllm_token_ids(loads(value))
            prompt = prompt or raw_prompt
            response = response or raw_response
    return TokenIds(prompt, response)


def encloses_call(record: dict[str, Any]) -> bool:
    """Whether a span makes its parent a span around model calls: it is a model call by its
    kind, whatever content it captured, or one already in Agent Lightning's shape (its
    tracer's, its LLM proxy's, LiteLLM's summary span). Its messages are not parsed: the store
    asks this of every span with a parent as it arrives."""
    name = record.get("name") or ""
    if _AGL_MATCH.search(name) or name in n.AGL_PROXY_SPANS:
        return True
    if name == n.AGL_ROLLOUT_SPAN:
        return False
    return _convention(record.get("attributes") or {}, record.get("events") or []) is not None


def translate(record: dict[str, Any], encloses_calls: bool = False) -> dict[str, Any]:
    """The record in Agent Lightning's shape if it is a model call; otherwise the record itself.

    Only adds: the original name goes to ``lightning_otlp.original_name``, every original
    attribute stays (the few whose key equals an adapter prefix move under
    ``lightning_otlp.original.``), and Agent Lightning's attributes are written over them.
    """
    written = translation(record, encloses_calls)
    if written is None:
        return record
    translated = dict(record)
    translated["name"] = n.AGL_LLM_CALL_NAME
    translated["attributes"] = translated_attributes(record.get("attributes") or {}, written)
    return translated


def translated_attributes(attrs: dict[str, Any], written: dict[str, Any]) -> dict[str, Any]:
    """A model call's attributes once translated: its own (those whose key equals an adapter
    prefix moved), ``written`` (``translation``'s) over them."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        out[n.MOVED_PREFIX + key if key in _PREFIX_KEYS else key] = value
    out.update(written)
    return out


def translation(record: dict[str, Any], encloses_calls: bool = False) -> dict[str, Any] | None:
    """The attributes ``translate`` writes over the record's own (Agent Lightning's, the
    original name and the convention), in that order; None when the record is no model call."""
    call = model_call(record, encloses_calls)
    if call is None:
        return None
    out = agl_attributes(call)
    out[n.ORIGINAL_NAME] = record.get("name")
    out[n.TRANSLATED_FROM] = call.convention
    return out


def moves(attrs: dict[str, Any]) -> bool:
    """Whether ``translate`` moves any of these attributes (keys equal to an adapter prefix)."""
    return any(key in attrs for key in _PREFIX_KEYS)
