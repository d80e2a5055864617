make test        # the suite: unit, end-to-end with real Python, Node.js, Go and Java exporters,
                 # real Collectors (sidecar, gateways), agl store and PostgreSQL
make test-fast   # only the tests that need nothing but .venv (no agl, Node.js or slow ones)
make test-pythons  # the fast suite and an end-to-end smoke on Python 3.10, 3.12 and 3.13
make lint        # ruff, ruff format and mypy (CI runs it before make test)
make docs        # this site, built strictly into site/
make bench       # benchmarks (BENCH=ingest|forward|sdk|affinity|genai|api for one)
make browser     # Debian's chromium for the dashboard test (make test installs it)
make golden      # re-record tests/golden/ from the real GenAI instrumentations
