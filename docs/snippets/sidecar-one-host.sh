# terminal 1: the receiver, off the Collector's ports (OTLP 4317/4318, health 13133)
lightning-otlp serve --grpc 127.0.0.1:14317 --http 127.0.0.1:14318 --health 127.0.0.1:13134
# terminal 2: the sidecar Collector, as any user; its queue goes to ./otelcol-queue
LIGHTNING_OTLP_ENDPOINT=127.0.0.1:14317 otelcol-contrib --config collector-config/sidecar.yaml
