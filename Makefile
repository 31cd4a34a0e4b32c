# onhand developer entry points (GNU make).
#
# `make test` is THE command: newcomers and CI (.ci/run) run exactly it.
# Every target uses the project's own virtualenv through .venv/bin/... paths;
# nothing needs to be activated.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Only directories that exist: git does not keep empty ones in a fresh clone.
CODE_DIRS := $(wildcard src tests loadtests)

export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_NO_INPUT := 1

.PHONY: help venv lock lint typecheck test test-fast format run clean distclean

help: ## List the targets.
	@grep -E '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) \
		| awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

venv: $(STAMP) ## Create .venv and install the project with the dev extra.

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install whenever pyproject.toml is newer than the stamp; also when a Lua script
# changes (the editable wheel force-includes lua/ as a copy in site-packages) or
# src/onhand/__init__.py appears (hatchling adds no path hook for an empty package).
CONSTRAINTS := .ci/constraints.txt
INSTALL_INPUTS := pyproject.toml $(CONSTRAINTS) $(wildcard lua/*.lua src/onhand/__init__.py)

$(STAMP): $(INSTALL_INPUTS) | $(BIN)/python
	$(BIN)/python -m pip install -c $(CONSTRAINTS) -e '.[dev]'
	touch $@

lock: ## Re-resolve the newest allowed dependency versions into .ci/constraints.txt.
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q -e '.[dev]'
	{ sed -n '/^#/p' $(CONSTRAINTS); \
	  .lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^onhand'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf .lock-venv

lint: venv ## ruff check + ruff format --check.
	$(BIN)/ruff check $(CODE_DIRS)
	$(BIN)/ruff format --check $(CODE_DIRS)

typecheck: venv ## mypy (strict on src, configured in pyproject.toml) on src, tests and loadtests.
	$(BIN)/mypy src tests loadtests

test: venv lint typecheck ## Lint, type checks and the whole test suite against real Redis.
	$(BIN)/pytest

test-fast: venv ## The test suite without tests marked slow.
	$(BIN)/pytest -m "not slow"

format: venv ## Rewrite code: ruff format + ruff check --fix.
	$(BIN)/ruff format $(CODE_DIRS)
	$(BIN)/ruff check --fix $(CODE_DIRS)

run: venv ## Run API + writer + reaper (embedded Redis/Postgres unless ONHAND_*_URL are set).
	$(BIN)/onhand up

clean: ## Remove caches and build artifacts (keeps .venv).
	rm -rf build dist .mypy_cache .ruff_cache .pytest_cache .hypothesis .coverage htmlcov
	find . -path ./$(VENV) -prune -o \( -name __pycache__ -o -name '*.egg-info' \) -prune \
		-exec rm -rf {} +

distclean: clean ## clean, and remove .venv too.
	rm -rf $(VENV)
