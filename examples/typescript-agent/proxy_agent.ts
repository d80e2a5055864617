// A TypeScript agent on the token-id path: its model calls go through Agent Lightning's LLM
// proxy, which asks vLLM for token ids; its spans and rewards go to lightning-otlp.
//
//   npm install ai @ai-sdk/openai-compatible @ai-sdk/otel @opentelemetry/api \
//     @opentelemetry/resources @opentelemetry/sdk-trace-node @opentelemetry/exporter-trace-otlp-proto tsx
//   OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 \
//   OTEL_RESOURCE_ATTRIBUTES=agentlightning.rollout_id=<rollout_id>,agentlightning.attempt_id=<attempt_id> \
//   AGL_PROXY_ENDPOINT=<LLMProxy.as_resource(rollout_id, attempt_id).endpoint> \
//   AGL_PROXY_MODEL=<model name> AGL_PROXY_KEY=<the proxy's LiteLLM key> \
//   npx tsx proxy_agent.ts '[{"question": "What is 6 x 7?", "answer": "42"}]'
import { trace } from '@opentelemetry/api';
import { detectResources, envDetector, resourceFromAttributes } from '@opentelemetry/resources';
import { BatchSpanProcessor, NodeTracerProvider } from '@opentelemetry/sdk-trace-node';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import { LegacyOpenTelemetry } from '@ai-sdk/otel';
import { generateText, registerTelemetry } from 'ai';

const provider = new NodeTracerProvider({
  // The rollout and attempt ids arrive through OTEL_RESOURCE_ATTRIBUTES.
  resource: resourceFromAttributes({ 'service.name': 'ts-agent' }).merge(
    detectResources({ detectors: [envDetector] }),
  ),
  spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter())],
});
provider.register();
const tracer = trace.getTracer('ts-agent');
// The SDK's ai.* spans; lightning-otlp reads each ai.generateText.doGenerate as a model call.
registerTelemetry(new LegacyOpenTelemetry({ tracer }));

// The proxy answers with vLLM's token ids beside the text. The SDK records no raw response, so
// keep them in the provider metadata, which the doGenerate span records.
const proxy = createOpenAICompatible({
  name: 'agl-proxy',
  baseURL: `${process.env.AGL_PROXY_ENDPOINT}/v1`,
  apiKey: process.env.AGL_PROXY_KEY,
  metadataExtractor: {
    extractMetadata: async ({ parsedBody }: { parsedBody: any }) => ({
      'agl-proxy': {
        prompt_token_ids: parsedBody?.prompt_token_ids ?? null,
        response_token_ids: parsedBody?.choices?.[0]?.provider_specific_fields?.token_ids ?? null,
      },
    }),
    // The proxy turns streamed calls into whole ones and streams back text only: no ids.
    createStreamExtractor: () => ({ processChunk: () => {}, buildMetadata: () => undefined }),
  },
});

async function main(): Promise<void> {
  const tasks: { question: string; answer: string }[] = JSON.parse(process.argv[2]);
  for (const task of tasks) {
    const { text } = await generateText({
      model: proxy.chatModel(process.env.AGL_PROXY_MODEL ?? ''),
      prompt: task.question,
      experimental_telemetry: { isEnabled: true },
    });
    // This call's reward, in Agent Lightning's layout, after the call ended.
    tracer
      .startSpan('agentlightning.annotation', {
        attributes: {
          'agentlightning.reward.0.name': 'primary',
          'agentlightning.reward.0.value': text.includes(task.answer) ? 1 : 0,
        },
      })
      .end();
  }
  await provider.shutdown(); // flush before the process exits
}

main();
