# before: agl store --host 127.0.0.1 --port 4747
lightning-otlp serve --store sqlite:///runs/train.db --dashboard auto
