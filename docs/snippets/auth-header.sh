OTEL_EXPORTER_OTLP_HEADERS="authorization=Bearer $(head -1 tokens)"   # any SDK
