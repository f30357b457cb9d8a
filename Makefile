# callgate: `make run` to try it, `make test` to check it. Everything else is set up by these.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)
HOST ?= 127.0.0.1
PORT ?= 8000
# Debian packages the tests drive for real: Chromium (Playwright e2e) and coturn (TURN).
SYSTEM_PACKAGES := chromium coturn

# The LiveKit browser SDK the call page loads in livekit mode, for the browser tests (npm registry).
LIVEKIT_CLIENT := 2.23.0
LIVEKIT_SDK := var/vendor/livekit-client-$(LIVEKIT_CLIENT)/dist/livekit-client.umd.js

.PHONY: run test lint bench install system-deps services fmt clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

run: export CALLGATE_PUBLIC_BASE_URL ?= http://$(HOST):$(PORT)
run: install
	$(BIN)/callgate migrate
	$(BIN)/callgate demo
	$(BIN)/callgate serve --host $(HOST) --port $(PORT)

system-deps:
	@missing=""; \
	for pkg in $(SYSTEM_PACKAGES); do dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# Install (Debian packages), configure and start PostgreSQL and Redis, then wait until both
# answer; a missing service fails the run, it never skips tests.
services: install
	bash tests/services.sh
	$(BIN)/python -m tests.services

$(LIVEKIT_SDK):
	mkdir -p var/vendor/tmp
	cd var/vendor/tmp && npm pack --silent livekit-client@$(LIVEKIT_CLIENT) >/dev/null
	rm -rf var/vendor/livekit-client-$(LIVEKIT_CLIENT)
	mkdir -p var/vendor/livekit-client-$(LIVEKIT_CLIENT)
	tar -xzf var/vendor/tmp/livekit-client-$(LIVEKIT_CLIENT).tgz --strip-components=1 \
	  -C var/vendor/livekit-client-$(LIVEKIT_CLIENT)
	rm -rf var/vendor/tmp

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

fmt: install
	$(BIN)/ruff check --fix .

test: install system-deps services $(LIVEKIT_SDK) lint
	CALLGATE_TEST_LIVEKIT_SDK=$(CURDIR)/$(LIVEKIT_SDK) $(BIN)/pytest

bench: install services
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
