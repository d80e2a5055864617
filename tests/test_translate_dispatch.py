"""Which spans are model calls, and what translation never touches.

The golden files cover what the real instrumentations write; these cases cover the rules: spans
that only look like a model call, spans already in Agent Lightning's shape, and layouts no
current release writes any more (the older ``gen_ai.content.*`` span events).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from lightning_otlp.translate import model_call, translate
from lightning_otlp.translate import names as n


def record(
    name: str, attributes: dict[str, Any], events: list[Any] | None = None
) -> dict[str, Any]:
    return {"name": name, "attributes": attributes, "events": events or []}


@pytest.mark.parametrize(
    "span",
    [
        record("POST", {"http.request.method": "POST", "url.full": "http://x/v1/chat/completions"}),
        record("embeddings m", {n.GENAI_OPERATION: "embeddings", n.GENAI_REQUEST_MODEL: "m"}),
        record("execute_tool t", {n.GENAI_OPERATION: "execute_tool", "gen_ai.tool.name": "t"}),
        record(
            "invoke_agent a",
            {n.GENAI_OPERATION: "invoke_agent", n.GENAI_INPUT_MESSAGES: "[]"},
        ),
        record(
            "openai.embeddings", {n.LLM_REQUEST_TYPE: "embedding", "gen_ai.prompt.0.content": "x"}
        ),
        record("CreateEmbeddings", {n.OI_SPAN_KIND: "EMBEDDING", n.OI_OUTPUT_VALUE: "{}"}),
        record("ai.embed.doEmbed", {n.AI_OPERATION_ID: "ai.embed.doEmbed"}),
        record("ai.generateText", {n.AI_OPERATION_ID: "ai.generateText", n.AI_RESPONSE_TEXT: "x"}),
        # Already Agent Lightning's: its tracer's model call and its LLM proxy's spans.
        record(n.AGL_LLM_CALL_NAME, {"gen_ai.prompt.0.content": "x", n.GENAI_OPERATION: "chat"}),
        record("raw_gen_ai_request", {n.GENAI_OPERATION: "chat"}),
        record("litellm_request", {n.LLM_REQUEST_TYPE: "chat"}),
        record("agentlightning.rollout", {n.LLM_REQUEST_TYPE: "completion"}),
    ],
    ids=lambda r: r["name"],
)
def test_not_a_model_call_is_left_as_it_is(span: dict[str, Any]) -> None:
    assert model_call(span) is None
    assert translate(span) is span


def prompt_json(*texts: str) -> str:
    return json.dumps([{"role": "user", "parts": [{"type": "text", "content": t}]} for t in texts])


@pytest.mark.parametrize(
    "span",
    [
        # openai-v2 with content capture off: nothing to train on.
        record("chat m", {n.GENAI_OPERATION: "chat", n.GENAI_RESPONSE_ID: "r1"}),
        # A preparation step marked as an LLM span.
        record("prepare", {n.OI_SPAN_KIND: "LLM", n.OI_MODEL_NAME: "m"}),
        # A call that failed before its request: request attributes and an exception only.
        {
            **record(
                "chat m",
                {n.GENAI_OPERATION: "chat", n.GENAI_REQUEST_MODEL: "m"},
                [{"name": "exception", "attributes": {"exception.type": "KeyError"}}],
            ),
            "status": {"status_code": "ERROR", "description": "KeyError"},
        },
        # A choice event with no message: a role alone is no response.
        record(
            "chat m",
            {n.GENAI_OPERATION: "chat"},
            [{"name": n.GENAI_CHOICE_EVENT, "attributes": {"index": 0}}],
        ),
    ],
    ids=["content-off", "preparation", "failed-before-request", "role-only"],
)
def test_no_prompt_and_no_response_is_never_a_call(span: dict[str, Any]) -> None:
    assert model_call(span) is None
    assert translate(span) is span


def test_a_failed_call_with_a_prompt_stays_a_call_without_a_response() -> None:
    # As Agent Lightning's own tracer records a failed call: a reward after it lands on it.
    span = {
        **record("chat m", {n.GENAI_OPERATION: "chat", n.GENAI_INPUT_MESSAGES: prompt_json("q")}),
        "status": {"status_code": "ERROR", "description": "timed out"},
    }
    got = translate(span)
    assert got["name"] == n.AGL_LLM_CALL_NAME
    assert got["status"] == span["status"]
    assert got["attributes"]["gen_ai.prompt.0.content"] == "q"
    assert not any(k.startswith("gen_ai.completion.") for k in got["attributes"])


def test_the_rollout_span_is_never_a_call_whatever_was_written_on_it() -> None:
    # LiteLLM writes each call's summary onto the current span: here the rollout's.
    span = record(
        "agentlightning.rollout",
        {
            n.LLM_REQUEST_TYPE: "completion",
            n.GENAI_OPERATION: "chat",
            n.GENAI_INPUT_MESSAGES: prompt_json("q"),
        },
    )
    assert translate(span) is span


def litellm_raw(resource: dict[str, Any] | None = None) -> dict[str, Any]:
    """LiteLLM's raw request span as it writes it: Python reprs, not JSON."""
    messages = [
        {"role": "user", "content": "q"},
        {"role": "tool", "tool_call_id": "c1", "content": "r"},
    ]
    choices = [
        {
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": "a"},
            "token_ids": [3, 4],
        }
    ]
    attrs = {
        "llm.openai.messages": str(messages),
        "llm.openai.choices": str(choices),
        "llm.openai.id": "chatcmpl-1",
        "llm.openai.prompt_token_ids": str([1, 2]),
    }
    span = record("raw_gen_ai_request", attrs)
    if resource is not None:
        span["resource"] = {"attributes": resource, "schema_url": ""}
    return span


def test_litellm_raw_request_span_is_the_call_unless_it_is_the_proxys() -> None:
    attrs = translate(litellm_raw({"service.name": "agent"}))["attributes"]
    assert attrs["gen_ai.prompt.1.role"] == "tool" and attrs["gen_ai.prompt.1.tool_call_id"] == "c1"
    assert attrs["gen_ai.completion.0.content"] == "a"
    assert (attrs[n.AGL_PROMPT_TOKEN_IDS], attrs[n.AGL_RESPONSE_TOKEN_IDS]) == ([1, 2], [3, 4])
    assert attrs[n.AGL_RESPONSE_ID] == "chatcmpl-1"
    # Agent Lightning's LLM proxy stamps its spans' resource with the request's sequence id.
    proxy = litellm_raw({n.AGL_PROXY_RESOURCE_MARK: 3, "agentlightning.rollout_id": "ro-1"})
    assert translate(proxy) is proxy
    # LiteLLM's summary span around the raw one is never the call.
    summary = record(
        "litellm_request", {n.GENAI_OPERATION: "chat", n.GENAI_INPUT_MESSAGES: prompt_json("q")}
    )
    assert translate(summary) is summary


def test_a_python_repr_is_parsed_never_evaluated() -> None:
    span = litellm_raw()
    span["attributes"]["llm.openai.messages"] = "[__import__('os').getpid()]"
    span["attributes"]["llm.openai.prompt_token_ids"] = "(1).__class__"
    attrs = translate(span)["attributes"]
    assert not any(k.startswith("gen_ai.prompt.") for k in attrs)
    assert n.AGL_PROMPT_TOKEN_IDS not in attrs
    assert attrs["gen_ai.completion.0.content"] == "a"


@pytest.mark.parametrize("key", ["response", "result", "content", "output"])
def test_a_tool_result_is_read_under_any_key_as_a_tool_message(key: str) -> None:
    # pydantic-ai's older formats send the result as a user message, under ``result``.
    messages = [
        {"role": "user", "parts": [{"type": "text", "content": "q"}]},
        {
            "role": "user",
            "parts": [{"type": "tool_call_response", "id": "c1", "name": "t", key: 42}],
        },
    ]
    span = record(
        "chat m", {n.GENAI_OPERATION: "chat", n.GENAI_INPUT_MESSAGES: json.dumps(messages)}
    )
    attrs = translate(span)["attributes"]
    assert attrs["gen_ai.prompt.1.role"] == "tool"
    assert attrs["gen_ai.prompt.1.content"] == "42"
    assert attrs["gen_ai.prompt.1.tool_call_id"] == "c1"


def test_tool_calls_and_ids_beside_parts_and_tools_from_elsewhere() -> None:
    # LiteLLM's semconv mode: OpenAI's keys beside ``parts``, the output tool call only in the
    # indexed function_call keys, the tools only in llm.request.functions.
    call = {"id": "c1", "type": "function", "function": {"name": "t", "arguments": "{}"}}
    messages = [
        {"role": "user", "parts": [{"type": "text", "content": "q"}]},
        {"role": "assistant", "parts": [], "tool_calls": [call]},
        {"role": "tool", "parts": [{"type": "text", "content": "r"}], "tool_call_id": "c1"},
    ]
    attrs = {
        n.GENAI_OPERATION: "chat",
        n.GENAI_INPUT_MESSAGES: json.dumps(messages),
        n.GENAI_OUTPUT_MESSAGES: json.dumps([{"role": "assistant", "parts": []}]),
        "gen_ai.completion.0.function_call.name": "t",
        "gen_ai.completion.0.function_call.arguments": '{"x": 1}',
        "llm.request.functions.0.name": "t",
    }
    got = translate(record("chat m", attrs))["attributes"]
    assert got["gen_ai.prompt.1.tool_calls.0.name"] == "t"
    assert got["gen_ai.prompt.1.tool_calls.0.id"] == "c1"
    assert (got["gen_ai.prompt.2.content"], got["gen_ai.prompt.2.tool_call_id"]) == ("r", "c1")
    assert got["gen_ai.completion.0.tool_calls.0.name"] == "t"
    assert got["gen_ai.completion.0.tool_calls.0.arguments"] == '{"x": 1}'
    assert got["gen_ai.request.functions.0.name"] == "t"


def test_tools_offered_from_the_joined_operation_details_event() -> None:
    # OpenLIT: messages on the span, the tools only in its log event.
    tools = [{"type": "function", "name": "t", "description": "d", "parameters": {}}]
    event = {
        "name": n.GENAI_OPERATION_DETAILS_EVENT,
        "attributes": {n.GENAI_TOOL_DEFINITIONS: tools, n.LOG_SOURCE: "log"},
    }
    attrs = {n.GENAI_OPERATION: "chat", n.GENAI_INPUT_MESSAGES: prompt_json("q")}
    got = translate(record("chat m", attrs, [event]))["attributes"]
    assert (
        got["gen_ai.request.functions.0.name"],
        got["gen_ai.request.functions.0.description"],
    ) == ("t", "d")


def test_older_content_span_events() -> None:
    prompt = json.dumps([{"role": "user", "content": "hi"}])
    span = record(
        "chat m",
        {n.GENAI_OPERATION: "chat"},
        [
            {"name": n.GENAI_PROMPT_EVENT, "attributes": {n.GENAI_PROMPT_EVENT_ATTRIBUTE: prompt}},
            {
                "name": n.GENAI_COMPLETION_EVENT,
                "attributes": {n.GENAI_COMPLETION_EVENT_ATTRIBUTE: "hello"},
            },
        ],
    )
    attrs = translate(span)["attributes"]
    assert attrs["gen_ai.prompt.0.role"] == "user"
    assert attrs["gen_ai.prompt.0.content"] == "hi"
    assert attrs["gen_ai.completion.0.role"] == "assistant"
    assert attrs["gen_ai.completion.0.content"] == "hello"


def test_keys_equal_to_an_adapter_prefix_move_aside() -> None:
    # TracerTraceToTriplet raises on a key that equals a prefix it unflattens.
    span = record(
        "chat m",
        {
            n.GENAI_OPERATION: "chat",
            "gen_ai.prompt": "legacy text",
            n.GENAI_INPUT_MESSAGES: prompt_json("q"),
        },
    )
    attrs = translate(span)["attributes"]
    assert "gen_ai.prompt" not in attrs
    assert attrs[n.MOVED_PREFIX + "gen_ai.prompt"] == "legacy text"


def test_token_ids_come_only_from_a_raw_response() -> None:
    text_only = record("ChatCompletion", {n.OI_SPAN_KIND: "LLM", n.OI_OUTPUT_VALUE: '{"id":"x"}'})
    attrs = translate(text_only)["attributes"]
    assert n.AGL_PROMPT_TOKEN_IDS not in attrs and n.AGL_RESPONSE_TOKEN_IDS not in attrs
    raw = {"id": "x", "prompt_token_ids": [1, 2], "choices": [{"token_ids": [3]}]}
    with_ids = record("ChatCompletion", {n.OI_SPAN_KIND: "LLM", n.OI_OUTPUT_VALUE: json.dumps(raw)})
    attrs = translate(with_ids)["attributes"]
    assert attrs[n.AGL_PROMPT_TOKEN_IDS] == [1, 2]
    assert attrs[n.AGL_RESPONSE_TOKEN_IDS] == [3]


def test_token_ids_a_vercel_agent_kept_in_its_provider_metadata() -> None:
    # What the LLM proxy returns from vLLM, kept by an @ai-sdk/openai-compatible metadataExtractor.
    call = {n.AI_OPERATION_ID: "ai.generateText.doGenerate", n.AI_RESPONSE_TEXT: "a"}
    attrs = translate(record("ai.generateText.doGenerate", call))["attributes"]
    assert n.AGL_PROMPT_TOKEN_IDS not in attrs
    metadata = {"agl-proxy": {"prompt_token_ids": [1, 2], "response_token_ids": [3]}}
    kept = dict(call, **{n.AI_RESPONSE_PROVIDER_METADATA: json.dumps(metadata)})
    attrs = translate(record("ai.generateText.doGenerate", kept))["attributes"]
    assert (attrs[n.AGL_PROMPT_TOKEN_IDS], attrs[n.AGL_RESPONSE_TOKEN_IDS]) == ([1, 2], [3])
    # Not token ids: left out, never guessed.
    odd = {"agl-proxy": {"prompt_token_ids": ["1"], "response_token_ids": []}}
    kept = dict(call, **{n.AI_RESPONSE_PROVIDER_METADATA: json.dumps(odd)})
    attrs = translate(record("ai.generateText.doGenerate", kept))["attributes"]
    assert n.AGL_PROMPT_TOKEN_IDS not in attrs and n.AGL_RESPONSE_TOKEN_IDS not in attrs


def test_unknown_instrumentation_following_the_conventions_is_translated() -> None:
    span = record(
        "my-llm-client generate",
        {
            n.GENAI_INPUT_MESSAGES: json.dumps(
                [{"role": "user", "parts": [{"type": "text", "content": "q"}]}]
            ),
            n.GENAI_OUTPUT_MESSAGES: json.dumps(
                [{"role": "assistant", "parts": [{"type": "text", "content": "a"}]}]
            ),
        },
    )
    attrs = translate(span)["attributes"]
    assert (attrs["gen_ai.prompt.0.content"], attrs["gen_ai.completion.0.content"]) == ("q", "a")
    assert attrs[n.ORIGINAL_NAME] == "my-llm-client generate"


@pytest.mark.parametrize("encoded", [[1, 2], "[1, 2]", "(1, 2)"], ids=["list", "json", "repr"])
def test_token_ids_in_any_encoding(encoded: Any) -> None:
    attrs = {
        n.GENAI_OPERATION: "chat",
        n.GENAI_INPUT_MESSAGES: prompt_json("q"),
        n.AGL_PROMPT_TOKEN_IDS: encoded,
        n.AGL_RESPONSE_TOKEN_IDS: "[3]",
    }
    got = translate(record("chat m", attrs))["attributes"]
    assert (got[n.AGL_PROMPT_TOKEN_IDS], got[n.AGL_RESPONSE_TOKEN_IDS]) == ([1, 2], [3])
