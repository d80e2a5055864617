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

# Go, the Collector and Maven keep everything under .cache/ too, so CI can cache that one folder.
CACHE := $(abspath .cache)
GO_ENV := GOPATH=$(CACHE)/go GOMODCACHE=$(CACHE)/go/mod GOCACHE=$(CACHE)/go/build GOFLAGS=-modcacherw
# The Collector built from collector-config/builder-config.yaml with the Collector's own builder.
OTELCOL_VERSION := 0.136.0
OTELCOL_DIR := $(CACHE)/otelcol/$(OTELCOL_VERSION)
OTELCOL := $(OTELCOL_DIR)/otelcol-lightning/otelcol-lightning
# Where the checksum database has no entry for some of the Collector's modules, they are taken
# from the module proxy as they are; set OTELCOL_GONOSUMDB= to check every one.
OTELCOL_GONOSUMDB ?= github.com/open-telemetry/opentelemetry-collector-contrib,go.opentelemetry.io/collector
GO_AGENT_BIN := $(CACHE)/go-agent/bin
MVN := mvn -B -q -Dmaven.repo.local=$(CACHE)/m2
JAVAAGENT_VERSION := 2.33.1
JAVAAGENT := $(CACHE)/java/opentelemetry-javaagent-$(JAVAAGENT_VERSION).jar
JAVA_SDK_AGENT := examples/java-agent/sdk

.PHONY: install install-test run test test-fast bench lint agl-env genai-env golden node-deps collector go-agent java-deps browser clean

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

collector: $(OTELCOL)

$(OTELCOL): collector-config/builder-config.yaml
	GOBIN=$(OTELCOL_DIR)/bin $(GO_ENV) go install go.opentelemetry.io/collector/cmd/builder@v$(OTELCOL_VERSION)
	cd $(OTELCOL_DIR) && $(GO_ENV) GONOSUMDB=$(OTELCOL_GONOSUMDB) \
		$(OTELCOL_DIR)/bin/builder --config $(abspath collector-config/builder-config.yaml)
	touch $@

go-agent: $(GO_AGENT_BIN)/.built

$(GO_AGENT_BIN)/.built: examples/go-agent/go.mod examples/go-agent/go.sum $(wildcard examples/go-agent/*/*.go)
	cd examples/go-agent && $(GO_ENV) go build -o $(GO_AGENT_BIN)/ ./...
	touch $@

JAVA_SERVICE := $(CACHE)/java/classes/Service.class

java-deps: $(JAVAAGENT) $(JAVA_SERVICE) $(JAVA_SDK_AGENT)/target/classpath.txt

$(JAVA_SERVICE): examples/java-agent/Service.java
	javac -d $(dir $@) $<

$(JAVAAGENT):
	$(MVN) dependency:copy -Dartifact=io.opentelemetry.javaagent:opentelemetry-javaagent:$(JAVAAGENT_VERSION) \
		-DoutputDirectory=$(dir $@)

$(JAVA_SDK_AGENT)/target/classpath.txt: $(JAVA_SDK_AGENT)/pom.xml $(wildcard $(JAVA_SDK_AGENT)/src/main/java/*.java)
	cd $(JAVA_SDK_AGENT) && $(MVN) compile
	touch $@

# Debian's chromium, for the dashboard test (playwright-core drives it; it downloads no browser).
CHROMIUM ?= /usr/bin/chromium

browser: $(CHROMIUM)

$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

run: install
	$(BIN)/lightning-otlp serve

test: install-test agl-env genai-env node-deps collector go-agent java-deps browser
	AGL_PYTHON=$(abspath $(AGL_VENV))/bin/python GENAI_PYTHON=$(abspath $(GENAI_VENV))/bin/python \
		$(BIN)/pytest

test-fast: install-test
	$(BIN)/pytest -m "$(FAST)"

$(VENV)/.bench: $(VENV)/.test
	$(BIN)/pip install $(PIP_FLAGS) -e '.[server,test,bench]'
	touch $@

# BENCH names benchmarks (default: all); BENCH_CHARTS=DIR draws their charts there.
bench: $(VENV)/.bench agl-env
	AGL_PYTHON=$(abspath $(AGL_VENV))/bin/python $(BIN)/python bench/run.py \
		$(if $(BENCH_CHARTS),--charts $(BENCH_CHARTS)) $(BENCH)

lint: install-test
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(NODE_DIR)/node_modules .pytest_cache .mypy_cache .ruff_cache $(JAVA_SDK_AGENT)/target
