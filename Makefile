# Two commands for a fresh machine with Python 3.11+:
#   make run    install and start the control plane on ./agentiam.db
#   make test   install test tools; run lint, type checks and the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test lint typecheck unit bench clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "AgentIAM needs Python 3.11 or newer; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@ $(VENV)/.run-installed

MASTER_KEY_FILE ?= agentiam.master.key

run: $(VENV)/.run-installed
	$(BIN)/agentiam db upgrade
	@test -f $(MASTER_KEY_FILE) || $(BIN)/agentiam keys generate-master-key -o $(MASTER_KEY_FILE)
	AGENTIAM_MASTER_KEY_FILE=$(MASTER_KEY_FILE) $(BIN)/agentiam serve

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy
	$(BIN)/mypy --strict examples

test: lint typecheck
	$(BIN)/pytest

bench: $(VENV)/.dev-installed
	$(BIN)/python bench/registry.py
	$(BIN)/python bench/tokens.py
	$(BIN)/python bench/policy.py
	$(BIN)/python bench/delegation.py
	$(BIN)/python bench/audit.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
