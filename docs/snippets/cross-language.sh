make run                                          # terminal 1: the receiver
cd examples/typescript-agent && npm install       # terminal 2: the agent
OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 PORT=8787 node agent.js
OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 \
  .venv/bin/python examples/python-runner/runner.py http://127.0.0.1:8787/solve   # terminal 3
.venv/bin/lightning-otlp rollouts --table         # 18 succeeded with reward 1, 2 failed
