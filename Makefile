# The two set-up commands are `make repro` and `make test`; both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup repro test lint use

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

repro: setup
	$(BIN)/dvc repro

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Replace params.yaml with a preset (a complete params set), e.g. `make use PRESET=experiment-7`.
use:
	@test -f presets/$(PRESET).yaml || { echo "error: presets/$(PRESET).yaml not found; see presets/"; exit 1; }
	cp presets/$(PRESET).yaml params.yaml
	@echo "params.yaml is now presets/$(PRESET).yaml; \`git diff params.yaml\` shows the change"
