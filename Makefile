# The README's verbs: run, test, bench, lint. Everything installs itself on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# agentlightning 0.3.0 is a reference for tests and benchmarks only, kept out of the project's venv.
AGL_VENV ?= .cache/agl-0.3.0
# Real GenAI instrumentations (OpenAI SDK, OTel openai-v2, OpenLLMetry, OpenInference) for the
# golden files and the trainable-span tests, kept out of the project's venv too.
GENAI_VENV ?= .cache/genai-py
# util-genai 0.4b0: the release that keeps openai-v2's default (per-message log events) mode.
GENAI_PACKAGES := openai==3.51.0 opentelemetry-instrumentation-openai-v2==2.4b0 \
	opentelemetry-util-genai==0.4b0 opentelemetry-instrumentation-openai==0.62.4 \
	openinference-instrumentation-openai==0.1.66 opentelemetry-sdk opentelemetry-exporter-otlp httpx
NODE_DIR := tests/node
PIP_FLAGS := --disable-pip-version-check --no-input -q
# Tests that need nothing beyond the project's own venv.
FAST := not e2e and not agl and not node and not slow

.PHONY: install install-test run test test-fast bench lint agl-env genai-env golden node-deps clean

# Serving needs only the [server] extra; the test tools come with install-test.
install: $(VENV)/.server

$(VENV)/.server: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_FLAGS) -e '.[server]'
	touch $@

install-test: $(VENV)/.test

$(VENV)/.test: $(VENV)/.server
	$(BIN)/pip install $(PIP_FLAGS) -e '.[server,test]'
	touch $@

agl-env: $(AGL_VENV)/.installed

$(AGL_VENV)/.installed:
	$(PYTHON) -m venv $(AGL_VENV)
	$(AGL_VENV)/bin/pip install $(PIP_FLAGS) agentlightning==0.3.0
	touch $@

genai-env: $(GENAI_VENV)/.installed

$(GENAI_VENV)/.installed:
	$(PYTHON) -m venv $(GENAI_VENV)
	$(GENAI_VENV)/bin/pip install $(PIP_FLAGS) $(GENAI_PACKAGES) -e .
	touch $@

# Re-record tests/golden/ from the real instrumentations; then review and refresh the expected
# files with LIGHTNING_OTLP_UPDATE_GOLDEN=1 $(BIN)/pytest tests/test_translate.py.
golden: install-test genai-env node-deps
	GENAI_PYTHON=$(abspath $(GENAI_VENV))/bin/python $(BIN)/python tests/genai/record.py

node-deps: $(NODE_DIR)/node_modules/.installed

$(NODE_DIR)/node_modules/.installed: $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

run: install
	$(BIN)/lightning-otlp serve

test: install-test agl-env genai-env node-deps
	AGL_PYTHON=$(abspath $(AGL_VENV))/bin/python GENAI_PYTHON=$(abspath $(GENAI_VENV))/bin/python \
		$(BIN)/pytest

test-fast: install-test
	$(BIN)/pytest -m "$(FAST)"

bench: install-test agl-env
	AGL_PYTHON=$(abspath $(AGL_VENV))/bin/python $(BIN)/python bench/run.py $(BENCH)

lint: install-test
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(NODE_DIR)/node_modules .pytest_cache .mypy_cache .ruff_cache
