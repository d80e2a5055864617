"""OpenLLMetry (Traceloop's ``opentelemetry-instrumentation-*``) to Agent Lightning's shape.

Current releases (0.62) write the OTel GenAI JSON attributes, read by ``otel_genai``. Older ones
wrote the indexed layout Agent Lightning itself reads (``gen_ai.prompt.{i}.role/content``,
``gen_ai.completion.{i}.*``, tools under ``llm.request.functions.{i}.*``): those are parsed here
so the call still gets its Agent Lightning name, tools and response id.
"""

from __future__ import annotations

from operator import methodcaller
from typing import Any, Final

from . import names as n
from .call import LlmCall, Message, ToolCall, arguments_text, as_str, as_text, indexed
from .otel_genai import indexed_tools

_INDEXED: Final = methodcaller("startswith", (n.AGL_PROMPT + ".", n.AGL_COMPLETION + "."))


def has_indexed_content(attrs: dict[str, Any]) -> bool:
    return any(map(_INDEXED, attrs))  # no Python frame per key: every model call asks


def parse(attrs: dict[str, Any]) -> LlmCall:
    call = LlmCall("openllmetry")
    call.request_model = as_str(attrs.get(n.GENAI_REQUEST_MODEL))
    call.response_model = as_str(attrs.get(n.GENAI_RESPONSE_MODEL))
    call.response_id = as_str(attrs.get(n.GENAI_RESPONSE_ID))
    call.prompt = [_message(g, "user") for g in indexed(attrs, n.AGL_PROMPT)]
    call.completion = [_message(g, "assistant") for g in indexed(attrs, n.AGL_COMPLETION)]
    call.tools = indexed_tools(attrs)
    return call


def _message(group: dict[str, Any], default_role: str) -> Message:
    message = Message(as_str(group.get("role")) or default_role, as_text(group.get("content")))
    message.tool_call_id = as_str(group.get("tool_call_id"))
    message.finish_reason = as_str(group.get("finish_reason"))
    for raw in indexed(group, "tool_calls"):
        message.tool_calls.append(
            ToolCall(
                name=str(raw.get("name", "")),
                arguments=arguments_text(raw.get("arguments")),
                id=as_str(raw.get("id")),
            )
        )
    return message
