"""Every attribute, event and span name the translators read or write, in one place.

Grouped by convention. Nothing here is spelt inline elsewhere in the package.
"""

from __future__ import annotations

from typing import Final

# -- what Agent Lightning 0.3 reads (adapter/triplet.py, AgentOps' OpenAI layout) ------------
# TracerTraceToTriplet's default ``llm_call_match`` is the regex ``openai\.chat\.completion``.
AGL_LLM_CALL_NAME: Final = "openai.chat.completion"
AGL_PROMPT: Final = "gen_ai.prompt"
AGL_COMPLETION: Final = "gen_ai.completion"
AGL_REQUEST: Final = "gen_ai.request"
AGL_RESPONSE: Final = "gen_ai.response"
AGL_REQUEST_MODEL: Final = "gen_ai.request.model"
AGL_REQUEST_FUNCTIONS: Final = "gen_ai.request.functions"
AGL_RESPONSE_ID: Final = "gen_ai.response.id"
AGL_RESPONSE_MODEL: Final = "gen_ai.response.model"
AGL_PROMPT_TOKEN_IDS: Final = "prompt_token_ids"
AGL_RESPONSE_TOKEN_IDS: Final = "response_token_ids"
# Agent Lightning's LLM proxy spans, read by name by LlmProxyTraceToTriplet: never renamed. LiteLLM
# gives its own spans the same names, so the name alone does not tell the proxy's: the proxy
# stamps each span's resource with the request's sequence id (``llm_proxy.py``), nothing else does.
AGL_PROXY_SPANS: Final = frozenset({"raw_gen_ai_request", "litellm_request"})
AGL_PROXY_RESOURCE_MARK: Final = "agentlightning.span_sequence_id"
# LiteLLM's summary span around one call (``USE_OTEL_LITELLM_REQUEST_SPAN``): the call itself is
# its ``raw_gen_ai_request`` child, with the whole request, response and token ids.
LITELLM_SUMMARY_SPAN: Final = "litellm_request"
# The span around a whole rollout (the SDK's ``rollout()``; also Agent Lightning's runner's):
# libraries that write call attributes onto the current span write them here, never a call.
AGL_ROLLOUT_SPAN: Final = "agentlightning.rollout"

# -- what this package adds to a translated span ---------------------------------------------
ORIGINAL_NAME: Final = "lightning_otlp.original_name"
TRANSLATED_FROM: Final = "lightning_otlp.translated_from"
# Attributes whose key equals one of the adapter's prefixes make its unflattening raise, so a
# translated span keeps them under this prefix instead.
MOVED_PREFIX: Final = "lightning_otlp.original."
# A GenAI log record joined onto its span becomes a span event with these attributes.
LOG_BODY: Final = "lightning_otlp.log.body"
LOG_SOURCE: Final = "lightning_otlp.source"

# -- OpenTelemetry GenAI semantic conventions ------------------------------------------------
GENAI_OPERATION: Final = "gen_ai.operation.name"
GENAI_CHAT_OPERATIONS: Final = frozenset({"chat", "text_completion", "generate_content"})
GENAI_INPUT_MESSAGES: Final = "gen_ai.input.messages"
GENAI_OUTPUT_MESSAGES: Final = "gen_ai.output.messages"
GENAI_SYSTEM_INSTRUCTIONS: Final = "gen_ai.system_instructions"
GENAI_TOOL_DEFINITIONS: Final = "gen_ai.tool.definitions"
GENAI_REQUEST_MODEL: Final = "gen_ai.request.model"
GENAI_RESPONSE_ID: Final = "gen_ai.response.id"
GENAI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GENAI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
# Message part types, and the keys a tool result's value is found under, in order: the
# conventions say ``response``; pydantic-ai writes ``result``, others ``content`` or ``output``.
PART_TEXT: Final = "text"
PART_TOOL_CALL: Final = "tool_call"
PART_TOOL_RESULT: Final = "tool_call_response"
TOOL_RESULT_KEYS: Final = ("response", "result", "content", "output")
# Older span events: a JSON list of messages in their attribute.
GENAI_PROMPT_EVENT: Final = "gen_ai.content.prompt"
GENAI_COMPLETION_EVENT: Final = "gen_ai.content.completion"
GENAI_PROMPT_EVENT_ATTRIBUTE: Final = "gen_ai.prompt"
GENAI_COMPLETION_EVENT_ATTRIBUTE: Final = "gen_ai.completion"
# Event (log record) names: one message each, or one whole operation.
GENAI_MESSAGE_EVENTS: Final[dict[str, str]] = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}
GENAI_CHOICE_EVENT: Final = "gen_ai.choice"
GENAI_OPERATION_DETAILS_EVENT: Final = "gen_ai.client.inference.operation.details"
GENAI_EVENT_PREFIX: Final = "gen_ai."
# Events that carry a call's response: emitted last, so the call's other events came before.
GENAI_RESPONSE_EVENTS: Final = frozenset(
    {GENAI_CHOICE_EVENT, GENAI_OPERATION_DETAILS_EVENT, GENAI_COMPLETION_EVENT}
)
# Where older SDKs put a log record's event name when the record has no event_name field.
EVENT_NAME_ATTRIBUTE: Final = "event.name"

# -- OpenLLMetry (Traceloop) -----------------------------------------------------------------
LLM_REQUEST_TYPE: Final = "llm.request.type"
LLM_CHAT_REQUEST_TYPES: Final = frozenset({"chat", "completion"})
LLM_REQUEST_FUNCTIONS: Final = "llm.request.functions"

# Where LiteLLM (``integrations/opentelemetry.py``) writes the OpenAI-style names its semconv mode
# leaves out: the output tool call and the tools offered, indexed.
LLM_COMPLETION_FUNCTION_CALL: Final = "function_call"

# -- LiteLLM's raw request span (``raw_gen_ai_request``) -------------------------------------
# ``llm.<provider>.<field>`` for each field of the request and of the provider's response, as
# Python reprs (``str()`` of a dict or list, token id lists too), not JSON.
LITELLM_PREFIX: Final = "llm."
LITELLM_MESSAGES: Final = "messages"
LITELLM_TOOLS: Final = "tools"
LITELLM_CHOICES: Final = "choices"
LITELLM_ID: Final = "id"
LITELLM_MODEL: Final = "model"
LITELLM_PROMPT_TOKEN_IDS: Final = "prompt_token_ids"

# -- text encodings ---------------------------------------------------------------------------
# Longest Python repr parsed: ``ast.literal_eval`` reads literals only, but its cost grows with
# size.
REPR_LIMIT: Final = 4 * 1024 * 1024

# -- OpenInference ---------------------------------------------------------------------------
OI_SPAN_KIND: Final = "openinference.span.kind"
OI_LLM_KIND: Final = "LLM"
OI_INPUT_MESSAGES: Final = "llm.input_messages"
OI_OUTPUT_MESSAGES: Final = "llm.output_messages"
OI_MESSAGE_ROLE: Final = "message.role"
OI_MESSAGE_CONTENT: Final = "message.content"
OI_MESSAGE_CONTENTS: Final = "message.contents"
OI_CONTENT_TEXT: Final = "message_content.text"
OI_MESSAGE_TOOL_CALLS: Final = "message.tool_calls"
OI_MESSAGE_TOOL_CALL_ID: Final = "message.tool_call_id"
OI_TOOL_CALL_ID: Final = "tool_call.id"
OI_TOOL_CALL_NAME: Final = "tool_call.function.name"
OI_TOOL_CALL_ARGUMENTS: Final = "tool_call.function.arguments"
OI_MODEL_NAME: Final = "llm.model_name"
OI_TOOLS: Final = "llm.tools"
OI_TOOL_SCHEMA: Final = "tool.json_schema"
OI_INPUT_VALUE: Final = "input.value"
OI_OUTPUT_VALUE: Final = "output.value"

# -- Vercel AI SDK ---------------------------------------------------------------------------
AI_OPERATION_ID: Final = "ai.operationId"
# Only these inner spans are the model call; ``ai.generateText`` around them is not.
AI_MODEL_CALL_SUFFIXES: Final = (".doGenerate", ".doStream")
AI_PROMPT_MESSAGES: Final = "ai.prompt.messages"
AI_PROMPT_TOOLS: Final = "ai.prompt.tools"
AI_RESPONSE_TEXT: Final = "ai.response.text"
AI_RESPONSE_TOOL_CALLS: Final = "ai.response.toolCalls"
AI_RESPONSE_ID: Final = "ai.response.id"
AI_RESPONSE_MODEL: Final = "ai.response.model"
AI_RESPONSE_FINISH_REASON: Final = "ai.response.finishReason"
AI_MODEL_ID: Final = "ai.model.id"
# JSON of the provider's metadata, ``{provider: {...}}``: where an agent's ``metadataExtractor``
# can keep the token ids a response carried (the SDK records no raw response).
AI_RESPONSE_PROVIDER_METADATA: Final = "ai.response.providerMetadata"

# -- raw responses ---------------------------------------------------------------------------
# Attributes known to hold a raw OpenAI-compatible response body (JSON), where a vLLM server's
# token ids survive: ``prompt_token_ids`` at the top, ``token_ids`` in each choice.
RAW_RESPONSE_ATTRIBUTES: Final = (OI_OUTPUT_VALUE,)
VLLM_PROMPT_TOKEN_IDS: Final = "prompt_token_ids"
VLLM_CHOICE_TOKEN_IDS: Final = "token_ids"
