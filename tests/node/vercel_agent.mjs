// A small tool-using agent on the Vercel AI SDK (`ai`), traced by its OpenTelemetry integration.
//
//   node vercel_agent.mjs --model-url URL (--endpoint URL | --record FILE) [--integration legacy|otel]
//                         [--call generate|stream]
//
// One rollout: generateText (or streamText, read chunk by chunk) with a weather tool (two model
// calls: the tool call, then the answer), an embed call (not a model call), then a reward span in
// Agent Lightning's layout.
// The rollout comes from OTEL_RESOURCE_ATTRIBUTES (agentlightning.rollout_id / attempt_id), as
// for any process in any language. `legacy` is the SDK's `ai.*` span layout
// (ai.generateText > ai.generateText.doGenerate, ai.streamText > ai.streamText.doStream); `otel`
// its newer GenAI-conventions one.
// --record writes the spans as the OTLP/JSON exporter would send them.
import { writeFileSync } from 'node:fs';

import { trace } from '@opentelemetry/api';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { JsonTraceSerializer } from '@opentelemetry/otlp-transformer';
import { detectResources, envDetector, resourceFromAttributes } from '@opentelemetry/resources';
import {
  BatchSpanProcessor,
  InMemorySpanExporter,
  NodeTracerProvider,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-node';
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import { LegacyOpenTelemetry, OpenTelemetry } from '@ai-sdk/otel';
import {
  embed,
  generateText,
  jsonSchema,
  registerTelemetry,
  stepCountIs,
  streamText,
  tool,
} from 'ai';

function parseArgs(argv) {
  const options = { integration: 'legacy', call: 'generate' };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '').replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    options[key] = argv[i + 1];
  }
  if (!options.modelUrl || !(options.endpoint || options.record)) {
    throw new Error('usage: node vercel_agent.mjs --model-url URL (--endpoint URL | --record FILE)');
  }
  return options;
}

const options = parseArgs(process.argv.slice(2));
const memory = new InMemorySpanExporter();
const exporter = options.record
  ? memory
  : new OTLPTraceExporter({ url: options.endpoint.replace(/\/$/, '') + '/v1/traces' });
const provider = new NodeTracerProvider({
  resource: resourceFromAttributes({ 'service.name': 'vercel-agent' }).merge(
    detectResources({ detectors: [envDetector] }),
  ),
  spanProcessors: [
    options.record ? new SimpleSpanProcessor(exporter) : new BatchSpanProcessor(exporter),
  ],
});
provider.register();
const tracer = trace.getTracer('vercel-agent');
registerTelemetry(
  options.integration === 'otel' ? new OpenTelemetry({ tracer }) : new LegacyOpenTelemetry({ tracer }),
);

const fake = createOpenAICompatible({
  name: 'fake',
  baseURL: options.modelUrl,
  apiKey: 'not-needed',
});

const weather = tool({
  description: 'Current weather in a city.',
  inputSchema: jsonSchema({
    type: 'object',
    properties: { city: { type: 'string' } },
    required: ['city'],
  }),
  execute: async ({ city }) => `Sunny, 21 C in ${city}`,
});

const telemetry = { isEnabled: true, functionId: 'weather-agent' };
const request = {
  model: fake.chatModel('fake-model'),
  system: 'You are a helpful weather assistant.',
  messages: [{ role: 'user', content: 'What is the weather in Paris?' }],
  tools: { get_weather: weather },
  stopWhen: stepCountIs(2),
  experimental_telemetry: telemetry,
};
let result;
const deltas = [];
if (options.call === 'stream') {
  const stream = streamText(request);
  for await (const delta of stream.textStream) deltas.push(delta);
  result = { text: await stream.text, steps: await stream.steps };
} else {
  result = await generateText(request);
}
await embed({
  model: fake.embeddingModel('fake-embedding'),
  value: 'What is the weather in Paris?',
  experimental_telemetry: telemetry,
});
// A reward in Agent Lightning's own layout: what emit_reward() writes in Python.
const reward = tracer.startSpan('agentlightning.annotation', {
  attributes: {
    'agentlightning.reward.0.name': 'primary',
    'agentlightning.reward.0.value': result.text.includes('Answer') ? 1.0 : 0.0,
  },
});
reward.end();

await provider.forceFlush();
if (options.record) {
  const body = JsonTraceSerializer.serializeRequest(memory.getFinishedSpans());
  writeFileSync(options.record, JSON.stringify({ otlp_json: JSON.parse(new TextDecoder().decode(body)) }, null, 1) + '\n');
}
await provider.shutdown();
console.log(JSON.stringify({ text: result.text, steps: result.steps.length, deltas }));
