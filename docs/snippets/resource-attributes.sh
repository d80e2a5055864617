OTEL_RESOURCE_ATTRIBUTES=agentlightning.rollout_id=ro-0123456789ab,agentlightning.attempt_id=at-01234567 \
OTEL_TRACES_EXPORTER=otlp OTEL_METRICS_EXPORTER=none OTEL_LOGS_EXPORTER=none \
OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 \
.venv/bin/opentelemetry-instrument .venv/bin/python examples/resource_attributes_agent.py
