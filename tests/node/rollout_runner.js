'use strict';
// A TypeScript-side runner for the gateway test, with the stock Node.js SDK only: rollouts that
// span two traces, an agent called in each over HTTP with `traceparent` and `baggage`.
//
//   node rollout_runner.js <otlp-http-traces-url> <agent-url> <count>
//
// The rollout and attempt ids are made here in Agent Lightning's format and put in W3C Baggage;
// BaggageSpanProcessor copies them onto this process's spans and the propagator sends them on.
// Prints one JSON line per rollout: its id and the names of the spans this process made for it.

const crypto = require('node:crypto');
const { context, propagation, trace, ROOT_CONTEXT } = require('@opentelemetry/api');
const { NodeTracerProvider, BatchSpanProcessor } = require('@opentelemetry/sdk-trace-node');
const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-proto');
const { BaggageSpanProcessor } = require('@opentelemetry/baggage-span-processor');
const {
  CompositePropagator,
  W3CBaggagePropagator,
  W3CTraceContextPropagator,
} = require('@opentelemetry/core');
const { resourceFromAttributes } = require('@opentelemetry/resources');

const [url, agentUrl, count] = process.argv.slice(2);
const names = new Map();
const provider = new NodeTracerProvider({
  resource: resourceFromAttributes({ 'service.name': 'typescript-runner' }),
  spanProcessors: [
    new BaggageSpanProcessor((key) => key.startsWith('agentlightning.')),
    {
      onStart() {},
      onEnd(span) {
        const id = span.attributes['agentlightning.rollout_id'];
        if (!names.has(id)) names.set(id, []);
        names.get(id).push(span.name);
      },
      forceFlush: async () => {},
      shutdown: async () => {},
    },
    new BatchSpanProcessor(new OTLPTraceExporter({ url })),
  ],
});
provider.register({
  propagator: new CompositePropagator({
    propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()],
  }),
});
const tracer = trace.getTracer('typescript-runner');

async function call(question) {
  const headers = { 'content-type': 'application/json' };
  propagation.inject(context.active(), headers);
  const response = await fetch(agentUrl, { method: 'POST', headers, body: JSON.stringify({ question }) });
  if (!response.ok) throw new Error(`agent answered ${response.status}`);
  return (await response.json()).answer;
}

async function runOne(i) {
  const rolloutId = 'ro-' + crypto.randomBytes(6).toString('hex');
  const attemptId = 'at-' + crypto.randomBytes(4).toString('hex');
  const ids = propagation.createBaggage({
    'agentlightning.rollout_id': { value: rolloutId },
    'agentlightning.attempt_id': { value: attemptId },
  });
  const withIds = propagation.setBaggage(ROOT_CONTEXT, ids);
  const answer = await context.with(withIds, () =>
    tracer.startActiveSpan('ts rollout', async (span) => {
      try {
        return await call(`What is ${i} + ${2 * i}?`);
      } finally {
        span.end();
      }
    }),
  );
  // A second trace of the same rollout: a new root span, the baggage kept.
  await context.with(withIds, () =>
    tracer.startActiveSpan('check answer', { root: true }, async (span) => {
      try {
        await call(`What is ${answer} + 0?`);
      } finally {
        span.end();
      }
    }),
  );
  return rolloutId;
}

async function main() {
  const ids = [];
  const n = Number(count);
  for (let start = 0; start < n; start += 8) {
    const batch = [];
    for (let i = start; i < Math.min(n, start + 8); i++) batch.push(runOne(i));
    ids.push(...(await Promise.all(batch)));
  }
  await provider.shutdown();
  for (const id of ids) console.log(JSON.stringify({ rollout_id: id, spans: names.get(id).sort() }));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
