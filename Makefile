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
# Agent frameworks on top of those conventions, one env each (.cache/fw-<name>): OpenLIT needs
# openai below 3, LiteLLM and pydantic-ai take 3; their OTel SDK pins differ too.
FRAMEWORKS := litellm pydantic-ai openlit
FRAMEWORK_PACKAGES_litellm := litellm==1.110.2 openai==3.63.0
FRAMEWORK_PACKAGES_pydantic-ai := pydantic-ai-slim[openai]==2.78.0 openai==3.63.0
FRAMEWORK_PACKAGES_openlit := openlit==1.45.0 openai==2.54.0
NODE_DIR := tests/node
PIP_FLAGS := --disable-pip-version-check --no-input -q
# Tests that need nothing beyond the project's own venv.
FAST := not e2e and not agl and not node and not slow and not postgres

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

# Each one-time build says what it is for as it starts and how long it took as it ends.
STEPS := $(CACHE)/steps
step = @mkdir -p $(STEPS) && date +%s > $(STEPS)/$(subst /,_,$@) && echo "==> $(1)"
step_done = @echo "<== $(1): $$(( $$(date +%s) - $$(cat $(STEPS)/$(subst /,_,$@)) )) s"
WHY_SERVER := .venv: the receiver and its server dependencies
WHY_VENV := .venv: the test and docs tools
WHY_AGL := agentlightning 0.3.0 in .cache/agl-0.3.0: agl store and the reference models, client and adapters
WHY_GENAI := real GenAI instrumentations in .cache/genai-py: the trainable-span tests
WHY_FRAMEWORK := an agent framework's env: its spans read as trainable calls
WHY_NODE := Node.js OpenTelemetry and Vercel AI SDK packages: the TypeScript agents
WHY_OTELCOL := the Collector v$(OTELCOL_VERSION) of collector-config/builder-config.yaml: sidecar and gateway runs
WHY_GO := the Go example agents: Go exporters and Baggage
WHY_JAVA := the OpenTelemetry Java agent and the Java examples: Java exporters
WHY_BROWSER := Debian chromium: the dashboard test
# The one-time builds are independent of each other: make test runs up to BUILD_JOBS at once.
BUILD_JOBS ?= 4
# Most of the suite waits on subprocesses (receivers, Collectors, agents, agl store): make test
# runs TEST_JOBS test files side by side (pytest-xdist), each file whole on one worker so a
# module's shared receiver is started once. One at a time by default: under heavy load, two
# end-to-end tests (watchdog timings, forwarded status mirrored) can run out of time side by side.
TEST_JOBS ?= 1
XDIST := $(if $(filter-out 1,$(TEST_JOBS)),-n $(TEST_JOBS) --dist loadfile)

.PHONY: install install-test docs run test test-deps test-fast test-pythons bench lint agl-env genai-env framework-envs golden node-deps collector go-agent java-deps browser clean

# Serving needs only the [server] extra; the test tools come with install-test.
install: $(VENV)/.server

$(VENV)/.server: pyproject.toml
	$(call step,$(WHY_SERVER))
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_FLAGS) -e '.[server]'
	touch $@
	$(call step_done,$(WHY_SERVER))

install-test: $(VENV)/.test

# The docs extra too: the suite builds the site (tests/test_docs.py); and the postgres extra, for
# the store shared by many receivers (make run's serving venv stays without it).
$(VENV)/.test: $(VENV)/.server
	$(call step,$(WHY_VENV))
	$(BIN)/pip install $(PIP_FLAGS) -e '.[server,test,docs,postgres]'
	touch $@
	$(call step_done,$(WHY_VENV))

# The documentation site, built strictly into site/ (a broken link or a page left out fails).
docs: install-test
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

agl-env: $(AGL_VENV)/.installed

$(AGL_VENV)/.installed:
	$(call step,$(WHY_AGL))
	$(PYTHON) -m venv $(AGL_VENV)
	$(AGL_VENV)/bin/pip install $(PIP_FLAGS) agentlightning==0.3.0
	touch $@
	$(call step_done,$(WHY_AGL))

genai-env: $(GENAI_VENV)/.installed

# After .venv: both install the project in place, which must not run twice at once.
$(GENAI_VENV)/.installed: | $(VENV)/.test
	$(call step,$(WHY_GENAI))
	$(PYTHON) -m venv $(GENAI_VENV)
	$(GENAI_VENV)/bin/pip install $(PIP_FLAGS) $(GENAI_PACKAGES) -e .
	touch $@
	$(call step_done,$(WHY_GENAI))

framework-envs: $(FRAMEWORKS:%=.cache/fw-%/.installed)

# The project is not installed there: the tests put this tree's src/ on PYTHONPATH, so several
# envs can build side by side and a moved tree needs no rebuild.
.cache/fw-%/.installed:
	$(call step,$(WHY_FRAMEWORK) ($*))
	$(PYTHON) -m venv .cache/fw-$*
	.cache/fw-$*/bin/pip install $(PIP_FLAGS) $(FRAMEWORK_PACKAGES_$*) \
		opentelemetry-sdk opentelemetry-exporter-otlp
	touch $@
	$(call step_done,$(WHY_FRAMEWORK) ($*))

# Re-record tests/golden/ from the real instrumentations; then review and refresh the expected
# files with LIGHTNING_OTLP_UPDATE_GOLDEN=1 $(BIN)/pytest tests/test_translate.py.
golden: install-test genai-env framework-envs node-deps
	GENAI_PYTHON=$(abspath $(GENAI_VENV))/bin/python $(BIN)/python tests/genai/record.py

node-deps: $(NODE_DIR)/node_modules/.installed

$(NODE_DIR)/node_modules/.installed: $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	$(call step,$(WHY_NODE))
	cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@
	$(call step_done,$(WHY_NODE))

collector: $(OTELCOL)

$(OTELCOL): collector-config/builder-config.yaml
	$(call step,$(WHY_OTELCOL))
	GOBIN=$(OTELCOL_DIR)/bin $(GO_ENV) go install go.opentelemetry.io/collector/cmd/builder@v$(OTELCOL_VERSION)
	cd $(OTELCOL_DIR) && $(GO_ENV) GONOSUMDB=$(OTELCOL_GONOSUMDB) \
		$(OTELCOL_DIR)/bin/builder --config $(abspath collector-config/builder-config.yaml)
	touch $@
	$(call step_done,$(WHY_OTELCOL))

go-agent: $(GO_AGENT_BIN)/.built

$(GO_AGENT_BIN)/.built: examples/go-agent/go.mod examples/go-agent/go.sum $(wildcard examples/go-agent/*/*.go)
	$(call step,$(WHY_GO))
	cd examples/go-agent && $(GO_ENV) go build -o $(GO_AGENT_BIN)/ ./...
	touch $@
	$(call step_done,$(WHY_GO))

JAVA_SERVICE := $(CACHE)/java/classes/Service.class

java-deps: $(JAVAAGENT) $(JAVA_SERVICE) $(JAVA_SDK_AGENT)/target/classpath.txt

$(JAVA_SERVICE): examples/java-agent/Service.java
	javac -d $(dir $@) $<

$(JAVAAGENT):
	$(call step,$(WHY_JAVA))
	$(MVN) dependency:copy -Dartifact=io.opentelemetry.javaagent:opentelemetry-javaagent:$(JAVAAGENT_VERSION) \
		-DoutputDirectory=$(dir $@)
	$(call step_done,$(WHY_JAVA))

# After the Java agent: Maven's local repository is not for two Mavens at once.
$(JAVA_SDK_AGENT)/target/classpath.txt: $(JAVA_SDK_AGENT)/pom.xml $(wildcard $(JAVA_SDK_AGENT)/src/main/java/*.java) | $(JAVAAGENT)
	$(call step,$(WHY_JAVA) (the SDK example))
	cd $(JAVA_SDK_AGENT) && $(MVN) compile
	touch $@
	$(call step_done,$(WHY_JAVA) (the SDK example))

# Debian's chromium, for the dashboard test (playwright-core drives it; it downloads no browser).
CHROMIUM ?= /usr/bin/chromium

browser: $(CHROMIUM)

$(CHROMIUM):
	$(call step,$(WHY_BROWSER))
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
	$(call step_done,$(WHY_BROWSER))

run: install
	$(BIN)/lightning-otlp serve

test-deps: install-test agl-env genai-env framework-envs node-deps collector go-agent java-deps browser

test:
	@$(MAKE) --no-print-directory -j$(BUILD_JOBS) test-deps
	@echo "==> the test suite"
	AGL_PYTHON=$(abspath $(AGL_VENV))/bin/python GENAI_PYTHON=$(abspath $(GENAI_VENV))/bin/python \
		$(BIN)/pytest $(XDIST)

test-fast: install-test
	$(BIN)/pytest -m "$(FAST)"

# The fast suite and an end-to-end smoke on every other Python the package declares (noxfile.py).
# pyenv's shims find `python3.X` only among the versions PYENV_VERSION names: name them all.
PYENV_ALL := $(shell command -v pyenv >/dev/null 2>&1 && { pyenv global; pyenv versions --bare; } | paste -sd: -)

test-pythons: install-test
	$(if $(PYENV_ALL),PYENV_VERSION=$(PYENV_ALL)) $(BIN)/nox $(if $(XDIST),-- $(XDIST))

$(VENV)/.bench: $(VENV)/.test
	$(BIN)/pip install $(PIP_FLAGS) -e '.[server,test,docs,postgres,bench]'
	touch $@

# BENCH names benchmarks (default: all); BENCH_CHARTS=DIR draws their charts there.
bench: $(VENV)/.bench agl-env
	AGL_PYTHON=$(abspath $(AGL_VENV))/bin/python $(BIN)/python bench/run.py \
		$(if $(BENCH_CHARTS),--charts $(BENCH_CHARTS)) $(BENCH)

lint: install-test
	$(BIN)/ruff check src tests bench examples tools noxfile.py
	$(BIN)/ruff format --check src tests bench examples tools noxfile.py
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .nox site $(NODE_DIR)/node_modules .pytest_cache .mypy_cache .ruff_cache $(JAVA_SDK_AGENT)/target
