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

# The LiveKit browser SDK callgate serves to the call page in livekit mode (npm registry), with the
# registry's integrity of its tarball (`npm view livekit-client@VERSION dist.integrity`).
LIVEKIT_CLIENT := 2.23.0
LIVEKIT_CLIENT_INTEGRITY := sha512-j9Kg86nJjBjNFUD+ukp2jwMCGa0k+YD5gU//RzAM+ZY3pbG631QCte7fQjwqWMmtBzhDJL9nKYuOLMv/9IbAxg==
LIVEKIT_SDK := var/vendor/livekit-client-$(LIVEKIT_CLIENT)/dist/livekit-client.umd.js

# The LiveKit server the LiveKit tests start (dev mode, loopback), built from its Go module at a
# pinned release; the versioned file name is the stamp, so it is rebuilt only when the pin moves.
LIVEKIT_SERVER := 1.13.5
LIVEKIT_SERVER_BIN := var/bin/livekit-server-$(LIVEKIT_SERVER)

.PHONY: run test lint bench install system-deps services sdk livekit-server fmt clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP) $(LIVEKIT_SDK)

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

# `npm pack` fetches the tarball; it is kept only if its SHA-512 is the pinned npm integrity.
$(LIVEKIT_SDK):
	rm -rf var/vendor/tmp
	mkdir -p var/vendor/tmp
	cd var/vendor/tmp && npm pack --silent livekit-client@$(LIVEKIT_CLIENT) >/dev/null
	test "sha512-$$(openssl dgst -sha512 -binary var/vendor/tmp/livekit-client-$(LIVEKIT_CLIENT).tgz \
	  | base64 -w0)" = "$(LIVEKIT_CLIENT_INTEGRITY)" \
	  || { echo "livekit-client $(LIVEKIT_CLIENT): npm integrity mismatch"; exit 1; }
	rm -rf var/vendor/livekit-client-$(LIVEKIT_CLIENT)
	mkdir -p var/vendor/livekit-client-$(LIVEKIT_CLIENT)
	tar -xzf var/vendor/tmp/livekit-client-$(LIVEKIT_CLIENT).tgz --strip-components=1 \
	  -C var/vendor/livekit-client-$(LIVEKIT_CLIENT)
	rm -rf var/vendor/tmp

sdk: $(LIVEKIT_SDK)

$(LIVEKIT_SERVER_BIN):
	rm -rf var/bin/go-install
	mkdir -p var/bin/go-install
	GOBIN=$(CURDIR)/var/bin/go-install go install \
	  github.com/livekit/livekit-server/cmd/server@v$(LIVEKIT_SERVER)
	mv var/bin/go-install/server $@
	rm -rf var/bin/go-install

livekit-server: $(LIVEKIT_SERVER_BIN)

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

fmt: install
	$(BIN)/ruff check --fix .

test: install system-deps services $(LIVEKIT_SDK) $(LIVEKIT_SERVER_BIN) lint
	CALLGATE_TEST_LIVEKIT_SDK=$(CURDIR)/$(LIVEKIT_SDK) \
	CALLGATE_TEST_LIVEKIT_SERVER=$(CURDIR)/$(LIVEKIT_SERVER_BIN) $(BIN)/pytest

bench: install services
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
