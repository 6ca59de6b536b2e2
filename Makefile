# SmartDialog Functions: the two commands are `make run` and `make test`.
# Every target sets up what it needs from a fresh clone (venv, pip, npm ci).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP_PY := $(VENV)/.installed
STAMP_NODE := node_modules/.installed

.DEFAULT_GOAL := help
.PHONY: help setup run test lint format bench scan connector schemas clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP_PY): requirements.txt requirements-dev.txt
	@echo "==> Creating $(VENV) with $(PYTHON) and installing requirements-dev.txt"
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version' 
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

$(STAMP_NODE): package.json package-lock.json
	@echo "==> Installing the pinned Azurite (npm ci)"
	@command -v npm >/dev/null || { echo "npm not found: install Node.js 20 or newer" >&2; exit 1; }
	@npm ci --no-audit --no-fund --loglevel=error
	@touch $@

setup: $(STAMP_PY) $(STAMP_NODE) ## Create the venv and install Azurite

run: setup ## Run Azurite, the SmartDialog sandbox and the app locally, wired together
	@$(PY) -m devhost.run

lint: $(STAMP_PY) ## ruff (lint + format check), mypy and the import contracts (import-linter)
	@echo "==> ruff, mypy and the import contracts"
	@$(PY) -m ruff check .
	@$(PY) -m ruff format --check .
	@$(PY) -m mypy
	@$(VENV)/bin/lint-imports --no-cache

format: $(STAMP_PY) ## Apply ruff's fixes and formatting
	@$(PY) -m ruff check --fix .
	@$(PY) -m ruff format .

test: setup lint ## Lint, then run the whole test suite (starts and stops Azurite and the sandbox itself)
	@bash tools/checkov.sh --install
	@echo "==> pytest (Azurite and the sandbox start on free ports and stop afterwards)"
	@$(PY) -m pytest

connector: $(STAMP_PY) ## Regenerate connector/ (the Power Automate custom connector) from the action specs
	@$(PY) -m tools.generate_connector

schemas: $(STAMP_PY) ## Regenerate schemas/ (JSON Schemas of queue messages and events) from the models
	@$(PY) -m tools.generate_schemas

bench: setup ## Run the performance benchmarks and print one table with targets
	@$(PY) -m bench

scan: ## Offline security scan of infra/ (checkov's Bicep framework, in its own .venv-checkov)
	@bash tools/checkov.sh

clean: ## Remove the venvs, node_modules and caches
	rm -rf $(VENV) .venv-checkov node_modules .mypy_cache .ruff_cache .pytest_cache .run
