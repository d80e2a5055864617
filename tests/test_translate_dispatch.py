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
    ],
    ids=lambda r: r["name"],
)
def test_not_a_model_call_is_left_as_it_is(span: dict[str, Any]) -> None:
    assert model_call(span) is None
    assert translate(span) is span


def test_a_chat_span_without_content_is_still_a_model_call() -> None:
    # openai-v2 with content capture off: the call is there, its text is not.
    got = translate(record("chat m", {n.GENAI_OPERATION: "chat", n.GENAI_RESPONSE_ID: "r1"}))
    assert got["name"] == n.AGL_LLM_CALL_NAME
    assert got["attributes"][n.AGL_RESPONSE_ID] == "r1"
    assert not any(k.startswith("gen_ai.prompt.") for k in got["attributes"])


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
    span = record("chat m", {n.GENAI_OPERATION: "chat", "gen_ai.prompt": "legacy text"})
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
