'use strict';
// Exports one span with a stock Node.js OTLP exporter, through the exporter's own options for
// auth and TLS, and prints the export result as one JSON line.
//
//   node ops_client.js <grpc|http|proto> <endpoint> <span-name>
//
// HTTP exporters get the token through their `headers` option; the gRPC exporter, whose
// `metadata` option needs @grpc/grpc-js objects, through OTEL_EXPORTER_OTLP_TRACES_HEADERS as
// any Node app would. TLS material comes from the standard variables every exporter reads:
// OTEL_EXPORTER_OTLP_CERTIFICATE, OTEL_EXPORTER_OTLP_CLIENT_KEY, OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE.
// Environment: OPS_TOKEN (optional bearer token).

const { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } =
  require('@opentelemetry/sdk-trace-base');
const { ExportResultCode } = require('@opentelemetry/core');

const EXPORTERS = {
  grpc: '@opentelemetry/exporter-trace-otlp-grpc',
  http: '@opentelemetry/exporter-trace-otlp-http',
  proto: '@opentelemetry/exporter-trace-otlp-proto',
};

async function main() {
  const [kind, endpoint, name] = process.argv.slice(2);
  if (!EXPORTERS[kind] || !endpoint || !name) {
    throw new Error('usage: node ops_client.js <grpc|http|proto> <endpoint> <span-name>');
  }
  const token = process.env.OPS_TOKEN;
  if (kind === 'grpc' && token) {
    process.env.OTEL_EXPORTER_OTLP_TRACES_HEADERS = `authorization=Bearer ${token}`;
  }
  const { OTLPTraceExporter } = require(EXPORTERS[kind]);
  const options = { url: kind === 'grpc' ? endpoint : `${endpoint}/v1/traces` };
  if (kind !== 'grpc' && token) options.headers = { authorization: `Bearer ${token}` };
  const exporter = new OTLPTraceExporter(options);

  // Make a finished span with the SDK, then hand it to the real exporter directly so the
  // result of that one export is known.
  const memory = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(memory)] });
  provider.getTracer('ops-client').startSpan(name, { attributes: { 'client.kind': kind } }).end();
  const spans = memory.getFinishedSpans();

  const result = await new Promise((resolve) => exporter.export(spans, resolve));
  await exporter.shutdown().catch(() => {});
  const ok = result.code === ExportResultCode.SUCCESS;
  const error = result.error ? String(result.error.message || result.error) : null;
  process.stdout.write(JSON.stringify({ ok, error, traceId: spans[0].spanContext().traceId }) + '\n');
}

main().catch((err) => {
  process.stderr.write(`${err.stack || err}\n`);
  process.exit(2);
});
