// A TypeScript agent reporting to lightning-otlp with the stock OpenTelemetry SDK only.
//
//   npm install @opentelemetry/api @opentelemetry/resources @opentelemetry/sdk-trace-node \
//     @opentelemetry/exporter-trace-otlp-proto tsx
//   OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 \
//   OTEL_RESOURCE_ATTRIBUTES=agentlightning.rollout_id=ro-0123456789ab,agentlightning.attempt_id=at-01234567 \
//   npx tsx quickstart.ts
import { SpanStatusCode, trace } from '@opentelemetry/api';
import { detectResources, envDetector, resourceFromAttributes } from '@opentelemetry/resources';
import { BatchSpanProcessor, NodeTracerProvider } from '@opentelemetry/sdk-trace-node';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto';

const provider = new NodeTracerProvider({
  // The rollout and attempt ids arrive through OTEL_RESOURCE_ATTRIBUTES.
  resource: resourceFromAttributes({ 'service.name': 'ts-agent' }).merge(
    detectResources({ detectors: [envDetector] }),
  ),
  spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter())],
});
provider.register();
const tracer = trace.getTracer('ts-agent');

async function solve(question: string): Promise<number> {
  return tracer.startActiveSpan('chat gpt-4o-mini', async (span) => {
    span.setAttributes({ 'gen_ai.request.model': 'gpt-4o-mini', 'gen_ai.prompt.length': question.length });
    span.setStatus({ code: SpanStatusCode.OK });
    span.end();
    return 42;
  });
}

async function main(): Promise<void> {
  await tracer.startActiveSpan('agent run', async (run) => {
    run.setAttribute('answer', await solve('What is 6 x 7?'));
    // Ends the attempt and its rollout; without it the rollout stays `running`.
    run.setAttribute('agentlightning.attempt.status', 'succeeded');
    run.end();
  });
  await provider.shutdown(); // flush before the process exits
}

main();
