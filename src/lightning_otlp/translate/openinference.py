"""OpenInference (Arize's ``openinference-instrumentation-*``) to Agent Lightning's shape.

A model call is a span with ``openinference.span.kind = LLM``. Messages are indexed
``llm.input_messages.{i}.message.*`` / ``llm.output_messages.{i}.message.*``; the raw response
is JSON in ``output.value``, where a vLLM server's ``prompt_token_ids`` and ``choices[0].token_ids``
survive: the one instrumentation here that keeps token ids without Agent Lightning's proxy.
"""

from __future__ import annotations

from typing import Any

from . import names as n
from .call import LlmCall, Message, ToolCall, arguments_text, as_str, as_text, indexed, loads
from .otel_genai import definitions


def is_model_call(attrs: dict[str, Any]) -> bool:
    return attrs.get(n.OI_SPAN_KIND) == n.OI_LLM_KIND


def parse(attrs: dict[str, Any]) -> LlmCall:
    call = LlmCall("openinference")
    call.request_model = as_str(attrs.get(n.OI_MODEL_NAME))
    call.prompt = [_message(g, "user") for g in indexed(attrs, n.OI_INPUT_MESSAGES)]
    call.completion = [_message(g, "assistant") for g in indexed(attrs, n.OI_OUTPUT_MESSAGES)]
    call.tools = definitions([loads(g.get(n.OI_TOOL_SCHEMA)) for g in indexed(attrs, n.OI_TOOLS)])
    response = loads(attrs.get(n.OI_OUTPUT_VALUE))
    if isinstance(response, dict):
        call.response_id = as_str(response.get("id"))
        call.response_model = as_str(response.get("model"))
        choices = response.get("choices")
        if isinstance(choices, list):
            for message, choice in zip(call.completion, choices, strict=False):
                if isinstance(choice, dict) and message.finish_reason is None:
                    message.finish_reason = as_str(choice.get("finish_reason"))
    return call


def _message(group: dict[str, Any], default_role: str) -> Message:
    message = Message(as_str(group.get(n.OI_MESSAGE_ROLE)) or default_role)
    content = group.get(n.OI_MESSAGE_CONTENT)
    if content is None:
        texts = [
            str(part[n.OI_CONTENT_TEXT])
            for part in indexed(group, n.OI_MESSAGE_CONTENTS)
            if n.OI_CONTENT_TEXT in part
        ]
        content = "".join(texts) if texts else None
    message.content = as_text(content)
    message.tool_call_id = as_str(group.get(n.OI_MESSAGE_TOOL_CALL_ID))
    for raw in indexed(group, n.OI_MESSAGE_TOOL_CALLS):
        message.tool_calls.append(
            ToolCall(
                name=str(raw.get(n.OI_TOOL_CALL_NAME, "")),
                arguments=arguments_text(raw.get(n.OI_TOOL_CALL_ARGUMENTS)),
                id=as_str(raw.get(n.OI_TOOL_CALL_ID)),
            )
        )
    return message
