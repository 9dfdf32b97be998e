# The two commands of the README: `make demo` and `make test`.
# Both set up everything on a fresh machine (a virtual environment with torch
# and the project); `make test` also makes sure PostgreSQL is running.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Pinned here for development and CI only; the package itself takes ranges so
# that a GPU node resolves its own CUDA build.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test lint install

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/tunefleet demo

test: $(STAMP)
	bash scripts/ensure-postgres.sh
	$(BIN)/ruff check .
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
