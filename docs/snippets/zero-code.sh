.venv/bin/pip install opentelemetry-distro opentelemetry-exporter-otlp opentelemetry-instrumentation-httpx
OTEL_SERVICE_NAME=weather-agent \
OTEL_TRACES_EXPORTER=otlp OTEL_METRICS_EXPORTER=none OTEL_LOGS_EXPORTER=none \
OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 \
.venv/bin/opentelemetry-instrument .venv/bin/python examples/zero_code_agent.py
