make test        # the suite: unit, end-to-end with real Python, Node.js, Go and Java exporters,
                 # real Collectors (sidecar, gateway) and agl store
make test-fast   # only the tests that need nothing but .venv (no agl, Node.js or slow ones)
make lint        # ruff, ruff format and mypy (CI runs it before make test)
make docs        # this site, built strictly into site/
make bench       # benchmarks (BENCH=ingest|forward|sdk|affinity|genai|api for one)
make browser     # Debian's chromium for the dashboard test (make test installs it)
make golden      # re-record tests/golden/ from the real GenAI instrumentations
