# Quick start: `make demo` (set up + search the offline demo world), `make test` (set up + test suite).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch first (a plain `torch` would pull several GB of CUDA packages).
	$(BIN)/pip install -q torch==2.13.0
	# postgres: the driver (psycopg 3) for postgresql:// study storages; tests/search/test_postgres.py uses it.
	$(BIN)/pip install -q -e ".[dev,postgres]"
	touch $@

demo: setup
	$(BIN)/python -m search.run --study demo --trials 200

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
