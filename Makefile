# Espalier: `make run` (set up, fetch models, serve, show an answer) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A fresh environment compiles llama.cpp (about 8 minutes on 2 cores); pip caches the wheel.
# For a CUDA build: make install CMAKE_ARGS="-DGGML_CUDA=on"
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)
STAMP := $(VENV)/.installed

.PHONY: install test unit models run bench-engine lint protos clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Reinstall only when the project's dependencies change.
$(STAMP): pyproject.toml | $(PY)
	@echo "== installing Espalier and its test extras (first time compiles llama.cpp: ~8 min) =="
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

models: install
	$(VENV)/bin/espalier models fetch small

test: install
	$(VENV)/bin/espalier models fetch small
	$(PY) -m pytest -q -ra

unit: install
	$(PY) -m pytest -q tests/unit

bench-engine: install
	$(VENV)/bin/espalier models fetch small
	$(VENV)/bin/espalier bench engine --model small --json

clean:
	rm -rf $(VENV) .pytest_cache
