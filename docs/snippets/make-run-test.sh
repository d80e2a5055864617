make run     # create .venv, install, serve: OTLP on 127.0.0.1:4317 (gRPC) and :4318 (HTTP)
make test    # the whole test suite (builds and installs what it needs on first run)
