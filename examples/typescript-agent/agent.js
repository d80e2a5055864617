// A small agent service instrumented with the stock OpenTelemetry Node.js SDK only.
// It knows nothing of Agent Lightning: its spans join the caller's trace through the W3C
// `traceparent` header, and lightning-otlp files them under the caller's rollout.
//
//   npm install
//   OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 PORT=8787 node agent.js
'use strict';

const http = require('node:http');
const { context, propagation, trace, SpanStatusCode } = require('@opentelemetry/api');
const { W3CTraceContextPropagator } = require('@opentelemetry/core');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const { BatchSpanProcessor, NodeTracerProvider } = require('@opentelemetry/sdk-trace-node');
const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-proto');

const provider = new NodeTracerProvider({
  resource: resourceFromAttributes({ 'service.name': 'typescript-agent' }),
  // Default batch settings: spans leave at most every 5 s, 512 at a time.
  spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter())],
});
provider.register({ propagator: new W3CTraceContextPropagator() });
const tracer = trace.getTracer('typescript-agent');

function solve(question) {
  // A stand-in for a model call and a tool call, with GenAI semantic-convention attributes.
  return tracer.startActiveSpan('chat gpt-4o-mini', { kind: 2 }, (chat) => {
    chat.setAttributes({
      'gen_ai.operation.name': 'chat',
      'gen_ai.request.model': 'gpt-4o-mini',
      'gen_ai.usage.input_tokens': 20 + question.length,
      'gen_ai.usage.output_tokens': 12,
    });
    const [a, b] = question.match(/\d+/g).map(Number);
    chat.end();
    return tracer.startActiveSpan('execute_tool calculator', (tool) => {
      tool.setAttribute('gen_ai.tool.name', 'calculator');
      tool.end();
      return a + b;
    });
  });
}

const server = http.createServer((req, res) => {
  const parent = propagation.extract(context.active(), req.headers);
  let body = '';
  req.on('data', (chunk) => { body += chunk; });
  req.on('end', () => context.with(parent, () => {
    tracer.startActiveSpan('POST /solve', { kind: 1 }, (span) => {
      try {
        const { question } = JSON.parse(body);
        if (question.includes('impossible')) throw new Error('cannot solve: ' + question);
        const answer = solve(question);
        span.setStatus({ code: SpanStatusCode.OK });
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ answer }));
      } catch (err) {
        span.recordException(err);
        span.setStatus({ code: SpanStatusCode.ERROR, message: err.message });
        res.writeHead(500, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: err.message }));
      } finally {
        span.end();
      }
    });
  }));
});

server.listen(Number(process.env.PORT || 8787), '127.0.0.1', () => {
  console.log(`agent listening on http://127.0.0.1:${server.address().port}/solve`);
});

async function stop() {
  server.close();
  await provider.shutdown(); // flushes what is still batched
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
