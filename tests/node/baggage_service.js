'use strict';
// A downstream HTTP service traced with the stock OpenTelemetry Node.js SDK, the W3C trace
// context and Baggage propagators, and the `node:http` instrumentation.
//
//   node baggage_service.js <otlp-http-traces-url> [--no-baggage-processor]
//
// A caller inside a rollout (Python's `rollout(propagate=True)`) sends its rollout and attempt
// ids in the `baggage` header. The Node SDK extracts Baggage into the context but never copies
// it onto spans by itself: `BaggageSpanProcessor`, limited to the `agentlightning.` keys, does
// that, so the service's spans carry the ids the receiver routes by.
//
// Prints `{"port": N}` once listening. Every request gets a server span (from the
// instrumentation) and a child span `inventory.lookup`. On SIGTERM it flushes its spans, prints
// `{"exported": N, "failures": N}` and exits.

const { NodeTracerProvider, BatchSpanProcessor } = require('@opentelemetry/sdk-trace-node');
const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-proto');
const { BaggageSpanProcessor } = require('@opentelemetry/baggage-span-processor');
const {
  CompositePropagator,
  ExportResultCode,
  W3CBaggagePropagator,
  W3CTraceContextPropagator,
} = require('@opentelemetry/core');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const { registerInstrumentations } = require('@opentelemetry/instrumentation');
const { HttpInstrumentation } = require('@opentelemetry/instrumentation-http');
const { trace } = require('@opentelemetry/api');

const [url, flag] = process.argv.slice(2);
if (!url) throw new Error('usage: node baggage_service.js <otlp-http-traces-url> [--no-baggage-processor]');

const state = { exported: 0, failures: 0 };
const inner = new OTLPTraceExporter({ url });
const exporter = {
  export(spans, done) {
    inner.export(spans, (result) => {
      if (result.code === ExportResultCode.SUCCESS) state.exported += spans.length;
      else state.failures += 1;
      done(result);
    });
  },
  shutdown: () => inner.shutdown(),
  forceFlush: () => inner.forceFlush(),
};

const spanProcessors = [new BatchSpanProcessor(exporter, { scheduledDelayMillis: 200 })];
if (flag !== '--no-baggage-processor') {
  spanProcessors.unshift(new BaggageSpanProcessor((key) => key.startsWith('agentlightning.')));
}
const provider = new NodeTracerProvider({
  resource: resourceFromAttributes({ 'service.name': 'inventory-service' }),
  spanProcessors,
});
provider.register({
  propagator: new CompositePropagator({
    propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()],
  }),
});
// Before `node:http` is loaded, so the instrumentation can patch it.
registerInstrumentations({ instrumentations: [new HttpInstrumentation()] });

const http = require('node:http');
const tracer = trace.getTracer('inventory-service');

const server = http.createServer((req, res) => {
  tracer.startActiveSpan('inventory.lookup', (span) => {
    span.setAttribute('inventory.item', req.url);
    span.end();
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ item: req.url, in_stock: 3 }));
  });
});

server.listen(0, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n');
});

process.on('SIGTERM', () => {
  server.close();
  provider
    .shutdown()
    .catch(() => { state.failures += 1; })
    .finally(() => {
      process.stdout.write(JSON.stringify(state) + '\n');
      process.exit(0);
    });
});
