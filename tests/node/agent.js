'use strict';
// A small agent traced with the stock OpenTelemetry Node.js SDK and one of its OTLP exporters.
//
//   node agent.js <grpc|http|proto> <endpoint> [--compression gzip] [--span-ids RO,AT]
//
// Rollout ids come either from --span-ids (set as span attributes) or from
// OTEL_RESOURCE_ATTRIBUTES, which the SDK's env resource detector reads as in any Node app.
// Prints one JSON line per finished span, as the SDK saw it, so a test can compare what was
// sent with what the receiver stored. Exits 3 when any export failed: the batch processor
// would otherwise only log it.

const { NodeTracerProvider, BatchSpanProcessor } = require('@opentelemetry/sdk-trace-node');
const { defaultResource, detectResources, envDetector, resourceFromAttributes } =
  require('@opentelemetry/resources');
const { ExportResultCode } = require('@opentelemetry/core');
const { SpanKind, SpanStatusCode, context, trace } = require('@opentelemetry/api');

const EXPORTERS = {
  grpc: '@opentelemetry/exporter-trace-otlp-grpc',
  http: '@opentelemetry/exporter-trace-otlp-http',
  proto: '@opentelemetry/exporter-trace-otlp-proto',
};
const STATUS = { [SpanStatusCode.UNSET]: 'UNSET', [SpanStatusCode.OK]: 'OK', [SpanStatusCode.ERROR]: 'ERROR' };

// Every attribute value type an OpenTelemetry span can carry.
const TYPED_ATTRIBUTES = {
  'agent.name': 'planner',
  'agent.step': 3,
  'agent.temperature': 0.25,
  'agent.streaming': true,
  'agent.tools': ['search', 'calculator'],
  'agent.token_counts': [12, 34, 56],
  'agent.scores': [0.5, 1.5],
  'agent.flags': [true, false],
};

function parseArgs(argv) {
  const [kind, endpoint, ...rest] = argv;
  if (!EXPORTERS[kind] || !endpoint) {
    throw new Error('usage: node agent.js <grpc|http|proto> <endpoint> [--compression gzip] [--span-ids RO,AT]');
  }
  const options = { kind, endpoint, compression: undefined, spanIds: undefined, traces: 2 };
  for (let i = 0; i < rest.length; i += 2) {
    const value = rest[i + 1];
    if (rest[i] === '--compression') options.compression = value;
    else if (rest[i] === '--span-ids') options.spanIds = value.split(',');
    else if (rest[i] === '--traces') options.traces = Number(value);
    else throw new Error(`unknown option ${rest[i]}`);
  }
  return options;
}

// Delegates to the real exporter and remembers whether any export failed.
function checked(inner) {
  const state = { failures: 0, exported: 0, errors: [] };
  const exporter = {
    export(spans, done) {
      inner.export(spans, (result) => {
        if (result.code === ExportResultCode.SUCCESS) state.exported += spans.length;
        else {
          state.failures += 1;
          state.errors.push(String(result.error));
        }
        done(result);
      });
    },
    shutdown: () => inner.shutdown(),
    forceFlush: () => (inner.forceFlush ? inner.forceFlush() : Promise.resolve()),
  };
  return { exporter, state };
}

function hrTime(ms) {
  return [Math.floor(ms / 1000), Math.round((ms % 1000) * 1e6)];
}

function nanos(time) {
  return (BigInt(time[0]) * 1000000000n + BigInt(time[1])).toString();
}

// One agent run: a root, an LLM call that fails, a tool call linked to it, a nested step.
// Start times are explicit and differ from end order, so sequence ids can be checked against
// start-time order while the SDK exports in end order.
function runTrace(tracer, baseMs, extra) {
  const at = (offset) => hrTime(baseMs + offset);
  const root = tracer.startSpan('agent.run', {
    kind: SpanKind.SERVER, attributes: { ...TYPED_ATTRIBUTES, ...extra }, startTime: at(0),
  });
  const ctx = trace.setSpan(context.active(), root);
  const llm = tracer.startSpan('llm.call', {
    kind: SpanKind.CLIENT, attributes: { 'gen_ai.request.model': 'gpt-4o-mini', ...extra }, startTime: at(1),
  }, ctx);
  llm.addEvent('gen_ai.content.prompt', { 'gen_ai.prompt': '2+2?', 'prompt.tokens': 7, 'prompt.cached': false }, at(2));
  llm.addEvent('retry', at(3));
  llm.setStatus({ code: SpanStatusCode.ERROR, message: 'rate limited' });
  llm.end(at(4));
  const tool = tracer.startSpan('tool.call', {
    attributes: { 'tool.name': 'calculator', ...extra },
    links: [{ context: llm.spanContext(), attributes: { 'link.reason': 'retry-of', 'link.n': 1 } }],
    startTime: at(5),
  }, ctx);
  const step = tracer.startSpan('tool.step', { attributes: { ...extra }, startTime: at(6) }, trace.setSpan(ctx, tool));
  step.end(at(7));
  tool.setStatus({ code: SpanStatusCode.OK });
  tool.end(at(8));
  root.end(at(9));
}

function describe(span) {
  const ctx = span.spanContext();
  const parent = span.parentSpanContext;
  return {
    name: span.name,
    trace_id: ctx.traceId,
    span_id: ctx.spanId,
    parent_id: parent ? parent.spanId : null,
    start_time: nanos(span.startTime),
    end_time: nanos(span.endTime),
    attributes: span.attributes,
    events: span.events.map((e) => ({ name: e.name, attributes: e.attributes || {}, timestamp: nanos(e.time) })),
    links: span.links.map((l) => ({
      trace_id: l.context.traceId, span_id: l.context.spanId, attributes: l.attributes || {},
    })),
    status: { code: STATUS[span.status.code], description: span.status.message || null },
    resource: span.resource.attributes,
  };
}

async function main() {
  const options = parseArgs(process.argv.slice(2));
  const { OTLPTraceExporter } = require(EXPORTERS[options.kind]);
  const real = new OTLPTraceExporter({ url: options.endpoint, compression: options.compression, timeoutMillis: 10000 });
  const { exporter, state } = checked(real);
  // Keeps every finished span for the report (the in-memory exporter forgets them at shutdown).
  const finished = [];
  const recorder = {
    onStart() {}, onEnd: (span) => finished.push(span), forceFlush: async () => {}, shutdown: async () => {},
  };
  const resource = defaultResource()
    .merge(resourceFromAttributes({ 'service.name': 'node-agent' }))
    .merge(detectResources({ detectors: [envDetector] }));
  const provider = new NodeTracerProvider({
    resource,
    spanProcessors: [
      recorder,
      // A long delay: the whole run goes out in the one export made at shutdown.
      new BatchSpanProcessor(exporter, { scheduledDelayMillis: 60000 }),
    ],
  });
  const tracer = provider.getTracer('lightning-otlp.tests.node-agent', '1.0');
  const extra = options.spanIds
    ? { 'agentlightning.rollout_id': options.spanIds[0], 'agentlightning.attempt_id': options.spanIds[1] }
    : {};
  // Spans start in the past, as a finished agent run's would.
  const base = Date.now() - 1000 - options.traces * 20;
  for (let i = 0; i < options.traces; i += 1) runTrace(tracer, base + i * 20, extra);
  await provider.shutdown();

  for (const span of finished) process.stdout.write(JSON.stringify(describe(span)) + '\n');
  if (state.failures || state.exported !== finished.length) {
    process.stderr.write(`export failed: ${state.failures} failure(s), ${state.exported} span(s) exported: ${state.errors.join('; ')}\n`);
    process.exitCode = 3;
  }
}

main().catch((err) => {
  process.stderr.write(`${err && err.stack ? err.stack : err}\n`);
  process.exitCode = 1;
});
