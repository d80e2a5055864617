from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

exporter = OTLPSpanExporter(
    endpoint="http://127.0.0.1:4318/v1/traces", headers={"authorization": "Bearer my-token"}
)
