"""One model call in a convention-neutral form, and its layout in Agent Lightning's attributes.

Every translator parses its convention into an ``LlmCall``; ``agl_attributes`` writes it the way
Agent Lightning's own (AgentOps) OpenAI tracer does, which is what ``TracerTraceToTriplet`` and
``TraceToMessages`` read: ``gen_ai.prompt.{i}.*``, ``gen_ai.completion.{i}.*`` (tool calls as
``.tool_calls.{j}.id/name/arguments``), ``gen_ai.request.*``, ``gen_ai.response.*`` and the
token id lists.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from operator import methodcaller
from typing import Any, NamedTuple

import orjson

from . import names as n


@dataclass(slots=True)
class ToolCall:
    name: str
    arguments: str
    id: str | None = None


@dataclass(slots=True)
class Message:
    role: str
    content: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None
    finish_reason: str | None = None


@dataclass(slots=True)
class Tool:
    name: str
    description: str | None = None
    parameters: str | None = None  # JSON schema as text


@dataclass(slots=True)
class LlmCall:
    """What a translator found: messages in and out, ids, and token ids if the source had them."""

    convention: str
    prompt: list[Message] = field(default_factory=list)
    completion: list[Message] = field(default_factory=list)
    tools: list[Tool] = field(default_factory=list)
    response_id: str | None = None
    request_model: str | None = None
    response_model: str | None = None
    prompt_token_ids: list[int] | None = None
    response_token_ids: list[int] | None = None


def agl_attributes(call: LlmCall) -> dict[str, Any]:
    """The attributes Agent Lightning's adapters read, in AgentOps' OpenAI layout."""
    out: dict[str, Any] = {}
    for i, message in enumerate(call.prompt):
        _message(out, f"{n.AGL_PROMPT}.{i}", message)
    for i, message in enumerate(call.completion):
        _message(out, f"{n.AGL_COMPLETION}.{i}", message)
        if message.finish_reason is not None:
            out[f"{n.AGL_COMPLETION}.{i}.finish_reason"] = message.finish_reason
    for i, tool in enumerate(call.tools):
        prefix = f"{n.AGL_REQUEST_FUNCTIONS}.{i}"
        out[f"{prefix}.name"] = tool.name
        if tool.description is not None:
            out[f"{prefix}.description"] = tool.description
        if tool.parameters is not None:
            out[f"{prefix}.parameters"] = tool.parameters
    if call.request_model is not None:
        out[n.AGL_REQUEST_MODEL] = call.request_model
    if call.response_model is not None:
        out[n.AGL_RESPONSE_MODEL] = call.response_model
    if call.response_id is not None:
        out[n.AGL_RESPONSE_ID] = call.response_id
    if call.prompt_token_ids:
        out[n.AGL_PROMPT_TOKEN_IDS] = list(call.prompt_token_ids)
    if call.response_token_ids:
        out[n.AGL_RESPONSE_TOKEN_IDS] = list(call.response_token_ids)
    return out


def _message(out: dict[str, Any], prefix: str, message: Message) -> None:
    out[f"{prefix}.role"] = message.role
    if message.content is not None:
        out[f"{prefix}.content"] = message.content
    if message.tool_call_id is not None:
        out[f"{prefix}.tool_call_id"] = message.tool_call_id
    for j, call in enumerate(message.tool_calls):
        if call.id is not None:
            out[f"{prefix}.tool_calls.{j}.id"] = call.id
        out[f"{prefix}.tool_calls.{j}.type"] = "function"
        out[f"{prefix}.tool_calls.{j}.name"] = call.name
        out[f"{prefix}.tool_calls.{j}.arguments"] = call.arguments


# -- small parsing helpers the translators share ---------------------------------------------


def loads(value: Any) -> Any:
    """A JSON attribute's value parsed, or None when it is not JSON text (or already parsed)."""
    if isinstance(value, (list, dict)):
        return value
    if not isinstance(value, str) or not value:
        return None
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        pass  # what only the standard library reads: NaN, integers past 64 bits, lone surrogates
    try:
        return json.loads(value)
    except ValueError:
        return None


def as_str(value: Any) -> str | None:
    """A scalar attribute as text; empty is none."""
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else str(value)


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def as_text(value: Any) -> str | None:
    """Message content as text: strings as they are, structured content as compact JSON."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def arguments_text(value: Any) -> str:
    """Tool call arguments as the JSON text OpenAI's API carries."""
    if isinstance(value, str):
        return value
    if value is None:
        return "{}"
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def literal(value: Any) -> Any:
    """A value written as JSON or as a Python repr (LiteLLM's ``str()`` of a dict), parsed;
    None if it is neither. ``ast.literal_eval`` reads literals only: nothing is ever run."""
    parsed = loads(value)
    if parsed is not None or not isinstance(value, str) or len(value) > n.REPR_LIMIT:
        return parsed
    try:
        return ast.literal_eval(value)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def token_ids(value: Any) -> list[int] | None:
    """A list of token ids, given as a list or as its JSON or Python text; None otherwise."""
    if isinstance(value, str):
        value = literal(value)
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(x, int) and not isinstance(x, bool) for x in value)
    ):
        return list(value)
    return None


class TokenIds(NamedTuple):
    """A model call's prompt and response token ids, each where known."""

    prompt: list[int] | None
    response: list[int] | None


def vllm_token_ids(response: Any) -> TokenIds:
    """vLLM's ``prompt_token_ids`` (top level) and first choice's ``token_ids`` from a raw body."""
    if not isinstance(response, dict):
        return TokenIds(None, None)
    prompt = token_ids(response.get(n.VLLM_PROMPT_TOKEN_IDS))
    choices = response.get("choices")
    completion = None
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        completion = token_ids(choices[0].get(n.VLLM_CHOICE_TOKEN_IDS))
    return TokenIds(prompt, completion)


def indexed(attrs: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    """Flat ``prefix.{i}.rest`` attributes grouped by index, in index order, rest as keys."""
    groups: dict[int, dict[str, Any]] = {}
    start = prefix + "."
    if not any(map(methodcaller("startswith", start), attrs)):
        return []  # the usual answer, found with no Python frame per key
    for key, value in attrs.items():
        if not key.startswith(start):
            continue
        index, _, rest = key[len(start) :].partition(".")
        if index.isdigit() and rest:
            groups.setdefault(int(index), {})[rest] = value
    return [groups[i] for i in sorted(groups)]
