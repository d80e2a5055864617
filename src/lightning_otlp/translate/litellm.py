"""LiteLLM's own per-call span (``raw_gen_ai_request``) to Agent Lightning's shape.

With ``litellm.callbacks=["otel"]`` inside a span of the agent's, LiteLLM writes each call's
summary onto that enclosing span (each call overwriting the last) and records the call itself
as a child ``raw_gen_ai_request``: ``llm.<provider>.messages``, ``.tools``, ``.choices``,
``.id``, ``.model``, and a vLLM server's ``prompt_token_ids`` (the response's ``token_ids`` sit
in ``choices``). Those values are Python reprs, not JSON: they are read with
``ast.literal_eval``, which accepts literals only and never runs code.
"""

from __future__ import annotations

from typing import Any

from . import names as n
from .call import LlmCall, as_list, as_str, literal, token_ids, vllm_token_ids
from .otel_genai import definitions, openai_message


def provider(attrs: dict[str, Any]) -> str | None:
    """The ``llm.<provider>.`` prefix of a raw request span, or None when the span is not one."""
    for key in attrs:
        if key.startswith(n.LITELLM_PREFIX) and key.endswith("." + n.LITELLM_CHOICES):
            middle = key[len(n.LITELLM_PREFIX) : -len(n.LITELLM_CHOICES) - 1]
            if middle and "." not in middle:
                return f"{n.LITELLM_PREFIX}{middle}."
    return None


def parse(attrs: dict[str, Any], prefix: str) -> LlmCall:
    call = LlmCall("litellm")
    call.prompt = [
        openai_message(m, "user")
        for m in as_list(literal(attrs.get(prefix + n.LITELLM_MESSAGES)))
        if isinstance(m, dict)
    ]
    choices = [
        c for c in as_list(literal(attrs.get(prefix + n.LITELLM_CHOICES))) if isinstance(c, dict)
    ]
    for choice in choices:
        inner = choice.get("message")
        message = openai_message(inner if isinstance(inner, dict) else {}, "assistant")
        message.finish_reason = as_str(choice.get("finish_reason"))
        call.completion.append(message)
    call.tools = definitions(literal(attrs.get(prefix + n.LITELLM_TOOLS)))
    call.response_id = as_str(attrs.get(prefix + n.LITELLM_ID))
    call.response_model = as_str(attrs.get(prefix + n.LITELLM_MODEL))
    call.request_model = as_str(attrs.get(n.GENAI_REQUEST_MODEL)) or call.response_model
    call.prompt_token_ids = token_ids(attrs.get(prefix + n.LITELLM_PROMPT_TOKEN_IDS))
    _, call.response_token_ids = vllm_token_ids({n.LITELLM_CHOICES: choices})
    return call
