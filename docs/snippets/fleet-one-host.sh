# 1. a PostgreSQL server (here Docker's official image; any PostgreSQL 13 or later will do)
docker run -d --name lightning-otlp-pg -e POSTGRES_PASSWORD=secret -p 127.0.0.1:5432:5432 postgres:16
# 2. two receivers on it, each in its own terminal, with its own ports and health port
PGPASSWORD=secret lightning-otlp serve --grpc 127.0.0.1:14317 --http 127.0.0.1:14318 --health 127.0.0.1:13134 --store postgresql://postgres@127.0.0.1:5432/postgres
PGPASSWORD=secret lightning-otlp serve --grpc 127.0.0.1:24317 --http 127.0.0.1:24318 --health 127.0.0.1:13135 --store postgresql://postgres@127.0.0.1:5432/postgres
# 3. the gateway in front of them (gateway.yaml has three places: the first receiver fills two)
LIGHTNING_OTLP_0=127.0.0.1:14317 LIGHTNING_OTLP_1=127.0.0.1:24317 LIGHTNING_OTLP_2=127.0.0.1:14317 \
  otelcol-contrib --config collector-config/gateway.yaml
