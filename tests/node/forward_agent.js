'use strict';
// An agent run traced with the stock OpenTelemetry Node.js SDK, exported over OTLP/HTTP protobuf.
//
//   node forward_agent.js <traces-endpoint> [steps]
//
// Rollout ids, if any, come from OTEL_RESOURCE_ATTRIBUTES (the SDK's env resource detector), as
// a runner would pass them to an agent process. Prints one JSON line per finished span; exits 3
// when an export failed (the batch processor would otherwise only log it).

const { NodeTracerProvider, BatchSpanProcessor } = require('@opentelemetry/sdk-trace-node');
const { defaultResource, detectResources, envDetector, resourceFromAttributes } =
  require('@opentelemetry/resources');
const { ExportResultCode } = require('@opentelemetry/core');
const { SpanKind, SpanStatusCode, context, trace } = require('@opentelemetry/api');
const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-proto');

async function main() {
  const [endpoint, stepsArg] = process.argv.slice(2);
  if (!endpoint) throw new Error('usage: node forward_agent.js <traces-endpoint> [steps]');
  const steps = Number(stepsArg || 5);
  const inner = new OTLPTraceExporter({ url: endpoint, timeoutMillis: 10000 });
  let failures = 0;
  const exporter = {
    export(spans, done) {
      inner.export(spans, (result) => {
        if (result.code !== ExportResultCode.SUCCESS) failures += 1;
        done(result);
      });
    },
    shutdown: () => inner.shutdown(),
    forceFlush: () => inner.forceFlush(),
  };
  const finished = [];
  const recorder = {
    onStart() {}, onEnd: (span) => finished.push(span), forceFlush: async () => {}, shutdown: async () => {},
  };
  const provider = new NodeTracerProvider({
    resource: defaultResource()
      .merge(resourceFromAttributes({ 'service.name': 'node-forward-agent' }))
      .merge(detectResources({ detectors: [envDetector] })),
    spanProcessors: [recorder, new BatchSpanProcessor(exporter)],
  });
  const tracer = provider.getTracer('lightning-otlp.tests.forward-agent', '1.0');
  const base = Date.now() - 1000;
  const at = (ms) => [Math.floor((base + ms) / 1000), ((base + ms) % 1000) * 1e6];
  const root = tracer.startSpan('agent.run', { kind: SpanKind.SERVER, startTime: at(0) });
  const ctx = trace.setSpan(context.active(), root);
  let previous;
  for (let i = 0; i < steps; i += 1) {
    const span = tracer.startSpan('chat gpt-4o-mini', {
      kind: SpanKind.CLIENT,
      startTime: at(10 + i * 10),
      attributes: { 'gen_ai.request.model': 'gpt-4o-mini', 'gen_ai.usage.input_tokens': 100 + i, step: i },
      links: previous ? [{ context: previous.spanContext(), attributes: { 'link.reason': 'follows' } }] : [],
    }, ctx);
    span.addEvent('gen_ai.choice', { index: i, 'finish.reason': 'stop' }, at(15 + i * 10));
    span.setStatus({ code: i % 2 ? SpanStatusCode.OK : SpanStatusCode.UNSET });
    span.end(at(18 + i * 10));
    previous = span;
  }
  root.end(at(20 + steps * 10));
  await provider.shutdown();
  for (const span of finished) {
    const c = span.spanContext();
    process.stdout.write(JSON.stringify({
      name: span.name,
      trace_id: c.traceId,
      span_id: c.spanId,
      parent_id: span.parentSpanContext ? span.parentSpanContext.spanId : null,
      attributes: span.attributes,
      events: span.events.length,
      links: span.links.length,
    }) + '\n');
  }
  if (failures) {
    process.stderr.write(`${failures} export(s) failed\n`);
    process.exitCode = 3;
  }
}

main().catch((err) => {
  process.stderr.write(`${err && err.stack ? err.stack : err}\n`);
  process.exitCode = 1;
});
