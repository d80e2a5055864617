agl store --host 127.0.0.1 --port 4747            # agentlightning 0.3
lightning-otlp serve --store 'agl+http://127.0.0.1:4747?outbox=/var/lib/lightning-otlp/outbox.db'
lightning-otlp status --store 'agl+http://127.0.0.1:4747?outbox=/var/lib/lightning-otlp/outbox.db'
