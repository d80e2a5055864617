"""OpenTelemetry GenAI semantic conventions to Agent Lightning's shape.

Reads, in order of preference: the current JSON attributes (``gen_ai.input.messages``,
``gen_ai.output.messages``, ``gen_ai.system_instructions``), the same inside a
``gen_ai.client.inference.operation.details`` event, the older per-message events
(``gen_ai.user.message`` ... ``gen_ai.choice``), and the oldest ``gen_ai.content.prompt`` /
``gen_ai.content.completion`` span events. Events are the span's own or GenAI log records joined
onto it (see ``logs.py``). OpenLLMetry 0.62 writes the same JSON attributes.
"""

from __future__ import annotations

from typing import Any

from . import names as n
from .call import (
    LlmCall,
    Message,
    Tool,
    ToolCall,
    arguments_text,
    as_list,
    as_str,
    as_text,
    indexed,
    loads,
)


def parse(attrs: dict[str, Any], events: list[dict[str, Any]], convention: str) -> LlmCall:
    call = LlmCall(convention)
    call.request_model = as_str(attrs.get(n.GENAI_REQUEST_MODEL))
    call.response_model = as_str(attrs.get(n.GENAI_RESPONSE_MODEL))
    call.response_id = as_str(attrs.get(n.GENAI_RESPONSE_ID))
    details = _operation_details(events)
    source = attrs if n.GENAI_INPUT_MESSAGES in attrs or n.GENAI_OUTPUT_MESSAGES in attrs else None
    source = source or details
    if source is not None:
        instructions = source.get(n.GENAI_SYSTEM_INSTRUCTIONS)
        system = None if instructions is None else parts_text(loads(instructions))
        prompt = part_messages(loads(source.get(n.GENAI_INPUT_MESSAGES)))
        if system is not None and not any(m.role == "system" for m in prompt):
            prompt.insert(0, Message("system", system))
        call.prompt = prompt
        call.completion = part_messages(loads(source.get(n.GENAI_OUTPUT_MESSAGES)))
    else:
        call.prompt, call.completion = _from_events(events)
    call.tools = _tools(attrs, details)
    _indexed_tool_calls(call, attrs)
    _default_finish_reasons(call, attrs.get(n.GENAI_RESPONSE_FINISH_REASONS))
    return call


def _tools(attrs: dict[str, Any], details: dict[str, Any] | None) -> list[Tool]:
    """The tools offered: on the span, in the joined operation-details event (OpenLIT puts them
    only there), or in the indexed ``llm.request.functions.{i}.*`` (LiteLLM's semconv mode)."""
    for source in (attrs, details or {}):
        if n.GENAI_TOOL_DEFINITIONS not in source:
            continue  # most calls offer no tools: nothing to read
        tools = definitions(loads(source[n.GENAI_TOOL_DEFINITIONS]))
        if tools:
            return tools
    return indexed_tools(attrs)


def indexed_tools(attrs: dict[str, Any]) -> list[Tool]:
    """Tools in OpenLLMetry's (and LiteLLM's) ``llm.request.functions.{i}.*`` layout."""
    return [
        Tool(
            name=str(group["name"]),
            description=as_str(group.get("description")),
            parameters=as_text(group.get("parameters")),
        )
        for group in indexed(attrs, n.LLM_REQUEST_FUNCTIONS)
        if "name" in group
    ]


def _indexed_tool_calls(call: LlmCall, attrs: dict[str, Any]) -> None:
    """An output tool call written only as ``gen_ai.completion.{i}.function_call.*`` (LiteLLM's
    semconv mode leaves the message's parts empty) joins the message it belongs to."""
    for i, group in enumerate(indexed(attrs, n.AGL_COMPLETION)):
        function = {
            key.partition(".")[2]: value
            for key, value in group.items()
            if key.startswith(n.LLM_COMPLETION_FUNCTION_CALL + ".")
        }
        if "name" not in function:
            continue
        while len(call.completion) <= i:
            call.completion.append(Message("assistant"))
        message = call.completion[i]
        if not message.tool_calls:
            message.tool_calls.append(
                ToolCall(
                    name=str(function["name"]),
                    arguments=arguments_text(function.get("arguments")),
                    id=as_str(function.get("id")),
                )
            )


def _operation_details(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    for event in events:
        if event.get("name") == n.GENAI_OPERATION_DETAILS_EVENT:
            attrs = dict(event.get("attributes") or {})
            body = loads(attrs.get(n.LOG_BODY))
            if isinstance(body, dict):
                attrs.update(body)
            return attrs
    return None


def _from_events(events: list[dict[str, Any]]) -> tuple[list[Message], list[Message]]:
    prompt: list[Message] = []
    completion: list[Message] = []
    for event in events:
        name = event.get("name")
        attrs = event.get("attributes") or {}
        body = loads(attrs.get(n.LOG_BODY))
        if not isinstance(body, dict):
            body = attrs
        if name in n.GENAI_MESSAGE_EVENTS:
            message = openai_message(body, default_role=n.GENAI_MESSAGE_EVENTS[name])
            # The tool message's call id is ``id`` in these events.
            if message.role == "tool" and message.tool_call_id is None:
                message.tool_call_id = as_str(body.get("id"))
            prompt.append(message)
        elif name == n.GENAI_CHOICE_EVENT:
            inner = body.get("message")
            message = openai_message(inner if isinstance(inner, dict) else {}, "assistant")
            message.finish_reason = as_str(body.get("finish_reason"))
            completion.append(message)
        elif name == n.GENAI_PROMPT_EVENT:
            prompt.extend(_openai_messages(attrs.get(n.GENAI_PROMPT_EVENT_ATTRIBUTE), "user"))
        elif name == n.GENAI_COMPLETION_EVENT:
            completion.extend(
                _openai_messages(attrs.get(n.GENAI_COMPLETION_EVENT_ATTRIBUTE), "assistant")
            )
    return prompt, completion


def _openai_messages(value: Any, default_role: str) -> list[Message]:
    parsed = loads(value)
    if isinstance(parsed, list):
        return [openai_message(m, default_role) for m in parsed if isinstance(m, dict)]
    if isinstance(value, str) and value:
        return [Message(default_role, value)]
    return []


def openai_message(body: dict[str, Any], default_role: str) -> Message:
    """A message in OpenAI's chat format (``role``, ``content``, ``tool_calls``...)."""
    message = Message(as_str(body.get("role")) or default_role)
    content = body.get("content")
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict) and "text" in p]
        message.content = "".join(str(t) for t in texts) if texts else as_text(content)
    else:
        message.content = as_text(content)
    for raw in as_list(loads(body.get("tool_calls")) or body.get("tool_calls")):
        if not isinstance(raw, dict):
            continue
        inner = raw.get("function")
        function: dict[str, Any] = inner if isinstance(inner, dict) else raw
        message.tool_calls.append(
            ToolCall(
                name=str(function.get("name", "")),
                arguments=arguments_text(function.get("arguments")),
                id=as_str(raw.get("id")),
            )
        )
    message.tool_call_id = as_str(body.get("tool_call_id")) or message.tool_call_id
    return message


def part_messages(value: Any) -> list[Message]:
    """Messages of the current conventions (``role`` and typed ``parts``), read by meaning.

    Each tool result becomes its own ``tool`` message, whatever role it came under (pydantic-ai's
    older formats send results as ``user``), its text found under any of ``TOOL_RESULT_KEYS``.
    Tool calls and a tool call id given beside ``parts``, in OpenAI's shape, are read too.
    """
    out: list[Message] = []
    for raw in as_list(value):
        if not isinstance(raw, dict):
            out.append(Message("user", as_text(raw)))
            continue
        if "tool_calls" in raw or "tool_call_id" in raw:  # OpenAI's shape beside the parts
            message = openai_message({k: v for k, v in raw.items() if k != "content"}, "user")
            message.content = None
        else:
            message = Message(as_str(raw.get("role")) or "user")
        texts: list[str] = []
        results: list[Message] = []
        for part in as_list(raw.get("parts")):
            if not isinstance(part, dict):
                continue
            kind = part.get("type")
            if kind == n.PART_TEXT:
                texts.append(str(part.get("content", "")))
            elif kind == n.PART_TOOL_CALL:
                message.tool_calls.append(
                    ToolCall(
                        name=str(part.get("name", "")),
                        arguments=arguments_text(part.get("arguments")),
                        id=as_str(part.get("id")),
                    )
                )
            elif kind == n.PART_TOOL_RESULT:
                result = next((part[k] for k in n.TOOL_RESULT_KEYS if k in part), None)
                results.append(
                    Message("tool", as_text(result) or "", tool_call_id=as_str(part.get("id")))
                )
        if texts:
            message.content = "".join(texts)
        elif "parts" not in raw:
            message.content = openai_message(raw, "user").content
        message.finish_reason = as_str(raw.get("finish_reason"))
        if results and not texts and not message.tool_calls:
            if message.role == "tool" and len(results) == 1 and message.tool_call_id:
                results[0].tool_call_id = results[0].tool_call_id or message.tool_call_id
            out.extend(results)
            continue
        out.append(message)
        out.extend(results)
    return out


def parts_text(value: Any) -> str | None:
    """System instructions: a list of parts (or plain text) as one text."""
    if isinstance(value, str):
        return value
    texts = [str(p.get("content", "")) for p in as_list(value) if isinstance(p, dict)]
    return "".join(texts) if texts else None


def definitions(value: Any) -> list[Tool]:
    tools = []
    for raw in as_list(value):
        if not isinstance(raw, dict):
            continue
        inner = raw.get("function")
        function: dict[str, Any] = inner if isinstance(inner, dict) else raw
        if "name" not in function:
            continue
        parameters = function.get("parameters", function.get("inputSchema"))
        tools.append(
            Tool(
                name=str(function["name"]),
                description=as_str(function.get("description")),
                parameters=None if parameters is None else as_text(parameters),
            )
        )
    return tools


def _default_finish_reasons(call: LlmCall, reasons: Any) -> None:
    if isinstance(reasons, list):
        for message, reason in zip(call.completion, reasons, strict=False):
            if message.finish_reason is None and isinstance(reason, str):
                message.finish_reason = reason
