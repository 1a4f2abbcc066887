# onevps: the two set-up commands are `make up` and `make test`.
# Everything runs from a local virtualenv (.venv) with pinned dependencies.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: up down status test unit integration check venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP) ## Create .venv with the pinned dependencies

up: $(STAMP) ## Build what is missing and start the full stack with the example apps
	$(BIN)/inv up

down: $(STAMP) ## Stop the stack (data volumes are kept)
	$(BIN)/inv down

status: $(STAMP)
	$(BIN)/inv status

test: $(STAMP) ## All tests: unit tests, then the integration tests on the real stack (needs Docker)
	$(BIN)/pytest tests/unit
	$(BIN)/pytest -v --durations=25 -n 2 tests/integration

unit: $(STAMP) ## Only the unit tests (no Docker needed)
	$(BIN)/pytest tests/unit

integration: $(STAMP)
	$(BIN)/pytest -v --durations=25 -n 2 tests/integration

check: $(STAMP)
	$(BIN)/inv check

clean:
	rm -rf $(VENV) .pytest_cache
