# three receivers: each its own ports, its own health port and its own store
lightning-otlp serve --grpc 127.0.0.1:14317 --http 127.0.0.1:14318 --health 127.0.0.1:13134 --store sqlite:///r0.db
lightning-otlp serve --grpc 127.0.0.1:24317 --http 127.0.0.1:24318 --health 127.0.0.1:13135 --store sqlite:///r1.db
lightning-otlp serve --grpc 127.0.0.1:34317 --http 127.0.0.1:34318 --health 127.0.0.1:13136 --store sqlite:///r2.db
# the gateway in front of them
LIGHTNING_OTLP_0=127.0.0.1:14317 LIGHTNING_OTLP_1=127.0.0.1:24317 LIGHTNING_OTLP_2=127.0.0.1:34317 \
  otelcol-contrib --config collector-config/gateway-rollout.yaml
