// A TypeScript runner beside Agent Lightning's Python runners, with only the stock OpenTelemetry
// SDK: it takes rollouts from the LightningStore REST API (/v1/agl), traces each as an agent
// would (one model call, one reward), exports the spans over OTLP/HTTP with the rollout and
// attempt ids as resource attributes, and reports the attempt's outcome.
//
//   tsx agl_runner.ts <endpoint> <stop-file>
//
// The receiver may be killed and restarted while it runs: every call is retried until it
// succeeds, and spans are re-exported (same ids: the receiver stores them once) until accepted.
import { existsSync } from 'node:fs';
import { ExportResultCode } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { resourceFromAttributes } from '@opentelemetry/resources';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  ReadableSpan,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';

const [endpoint, stopFile] = process.argv.slice(2);
const api = `${endpoint}/v1/agl`;
const workerId = 'ts-runner';
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function call(path: string, body: unknown): Promise<any> {
  for (;;) {
    try {
      const response = await fetch(api + path, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
      if (response.ok) return await response.json();
      if (response.status < 500) throw new Error(`${path}: ${response.status} ${await response.text()}`);
    } catch (error) {
      if (error instanceof Error && error.message.startsWith(path)) throw error;
    }
    await sleep(200); // the receiver is restarting
  }
}

async function exportUntilStored(spans: ReadableSpan[]): Promise<void> {
  const exporter = new OTLPTraceExporter({ url: `${endpoint}/v1/traces` });
  for (;;) {
    const code = await new Promise<ExportResultCode>((resolve) =>
      exporter.export(spans, (result) => resolve(result.code)),
    );
    if (code === ExportResultCode.SUCCESS) return;
    await sleep(200);
  }
}

async function runOne(rollout: any): Promise<void> {
  const attempt = rollout.attempt;
  const collected = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({
      'service.name': 'ts-agent',
      'agentlightning.rollout_id': rollout.rollout_id,
      'agentlightning.attempt_id': attempt.attempt_id,
    }),
    spanProcessors: [new SimpleSpanProcessor(collected)],
  });
  const tracer = provider.getTracer('ts-agent');
  const question = String(rollout.input?.question ?? '');
  const answer = question.toUpperCase();
  await tracer.startActiveSpan('agent.run', async (root) => {
    const llm = tracer.startSpan('openai.chat.completion', {
      attributes: {
        'gen_ai.request.model': 'ts-model',
        'gen_ai.prompt.0.role': 'user',
        'gen_ai.prompt.0.content': question,
        'gen_ai.completion.0.role': 'assistant',
        'gen_ai.completion.0.content': answer,
        prompt_token_ids: [1, 2, 3],
        response_token_ids: [4, 5],
      },
    });
    llm.end();
    await sleep(20);
    const reward = tracer.startSpan('agentlightning.annotation', {
      attributes: {
        'agentlightning.reward.0.name': 'primary',
        'agentlightning.reward.0.value': Number(rollout.input?.reward ?? 0),
      },
    });
    reward.end();
    root.end();
  });
  await exportUntilStored(collected.getFinishedSpans());
  await call(`/rollouts/${rollout.rollout_id}/attempts/${attempt.attempt_id}`, {
    status: 'succeeded',
  });
  await provider.shutdown();
}

async function main(): Promise<void> {
  let done = 0;
  while (!existsSync(stopFile)) {
    const rollouts = await call('/queues/rollouts/dequeue', { worker_id: workerId, limit: 1 });
    if (rollouts.length === 0) {
      await sleep(100);
      continue;
    }
    await runOne(rollouts[0]);
    done += 1;
  }
  console.log(JSON.stringify({ worker_id: workerId, rollouts: done }));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
