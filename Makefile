# Espalier: `make run` (set up, fetch models, serve, show an answer) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A fresh environment compiles llama.cpp (about 8 minutes on 2 cores); pip caches the wheel.
# For a CUDA build: make install CMAKE_ARGS="-DGGML_CUDA=on"
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)
STAMP := $(VENV)/.installed

.PHONY: install tools node go test unit models run bench-engine gpu-bundle lint protos api-snapshot clean
PORT ?= 50051
QUESTION ?= What are the most effective ways to deal with stress?

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Reinstall only when the project's dependencies change.
$(STAMP): pyproject.toml | $(PY)
	@echo "== installing Espalier with its test, bench and remote-test extras (first time compiles llama.cpp: ~8 min) =="
	$(PY) -m pip install -q -e '.[test,bench,remote-test]'
	@touch $(STAMP)

install: $(STAMP)

models: install
	$(VENV)/bin/espalier models fetch small

# Both default models: the speculation tests verify the large model with the small one as its draft.
test: install tools node go
	$(VENV)/bin/espalier models fetch all
	$(PY) -m pytest -q -ra

# buf (proto lint) from the npm registry, when npm is present; the lint test is skipped without it.
tools:
	@if command -v npm >/dev/null && [ ! -x .tools/node_modules/.bin/buf ]; then \
		npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf || echo "buf not installed"; fi

# clients/node's dependencies from its lock file, when npm is present (again only when the lock file
# changed); the Node client's test is skipped without node (Debian: apt-get install nodejs npm).
NODE_LOCK := clients/node/package-lock.json
node:
	@if command -v npm >/dev/null && { [ ! -f clients/node/node_modules/.package-lock.json ] || \
			[ $(NODE_LOCK) -nt clients/node/node_modules/.package-lock.json ]; }; then \
		npm ci --silent --no-audit --no-fund --ignore-scripts --prefix clients/node || \
			echo "clients/node dependencies not installed"; fi

# clients/go's toolchain and Debian's Go libraries (clients/go/README.md), from apt when any is missing
# and we are root (CI); otherwise it says why and the Go client's test is skipped. Under CI a failed
# install fails the run, so that the test cannot be skipped there unnoticed. apt's output: .tools/apt-go.log
GO_PACKAGES := golang-go protobuf-compiler protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev \
	golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev
GOCODE := /usr/share/gocode/src
go:
	@missing=; for tool in go protoc protoc-gen-go protoc-gen-go-grpc; do \
		command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	for lib in google.golang.org/grpc github.com/golang/protobuf/proto/registry.go; do \
		[ -e $(GOCODE)/$$lib ] || missing="$$missing $$lib"; done; \
	if [ -z "$$missing" ]; then :; \
	elif ! command -v apt-get >/dev/null; then \
		echo "Go client packages not installed (missing$$missing): no apt-get; see clients/go/README.md"; \
	elif [ "$$(id -u)" != 0 ]; then \
		echo "Go client packages not installed (missing$$missing): not root; apt-get install $(GO_PACKAGES)"; \
	else \
		echo "== installing the Go client's toolchain and libraries with apt (missing$$missing) =="; \
		mkdir -p .tools; \
		if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
				-o DPkg::Lock::Timeout=120 --no-install-recommends $(GO_PACKAGES); } >.tools/apt-go.log 2>&1; then \
			tail -n 20 .tools/apt-go.log; echo "Go client packages not installed (log: .tools/apt-go.log)"; \
			if [ "$${CI:-false}" != false ]; then exit 1; fi; fi; \
	fi

unit: install
	$(PY) -m pytest -q tests/unit

bench-engine: install
	$(VENV)/bin/espalier models fetch small
	$(VENV)/bin/espalier bench engine --model small --json

# Everything an offline NVIDIA box needs to build and measure the CUDA path (deploy/README.md, "The GPU check").
gpu-bundle: install
	deploy/gpu/prepare.sh gpu-bundle

# Fetch both default models, start the server, show one answer being built, keep serving.
run: install
	$(VENV)/bin/espalier models fetch all
	@echo "== starting the Espalier server on localhost:$(PORT) (loading models takes a few seconds) =="
	@$(VENV)/bin/espalier serve --port $(PORT) & pid=$$!; \
	trap 'kill $$pid 2>/dev/null; wait $$pid 2>/dev/null' INT TERM EXIT; \
	$(VENV)/bin/espalier ask --wait 600 --target localhost:$(PORT) "$(QUESTION)" || exit 1; \
	echo; \
	echo "== the server keeps running on localhost:$(PORT). Ask more in another terminal:"; \
	echo "     $(VENV)/bin/espalier ask \"your question\" --target localhost:$(PORT)"; \
	echo "   press Ctrl-C to stop it. =="; \
	wait $$pid

# Regenerate the Python stubs beside the proto (a test fails when they are stale).
protos: install
	$(PY) -m grpc_tools.protoc -I protos --python_out=protos --pyi_out=protos --grpc_python_out=protos \
		protos/espalier/v1/espalier.proto

# Record the proto as released in v1 (protos/README.md): only after a deliberate, additive change;
# tests/unit/test_api_compat.py checks every later change against it.
api-snapshot: install
	$(PY) protos/api_compat.py snapshot

lint: install
	$(PY) -m pip install -q ruff mypy
	$(VENV)/bin/ruff check planner service clients tests

clean:
	rm -rf $(VENV) .pytest_cache
