# Two commands on a fresh machine:
#   make run    set everything up and start the service on an embedded SQLite database
#   make test   set everything up and run lint, type checks and the whole test suite
#               (SQLite and PostgreSQL; GATEWAY_TEST_POSTGRES_URL picks the server)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint typecheck pytest install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python scripts/dev.py

lint: $(STAMP)
	$(BIN)/ruff check gateway tests bench migrations wsgi.py config
	$(BIN)/ruff format --check gateway tests bench wsgi.py config

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest -n 2 -p no:cacheprovider

test: lint typecheck pytest

clean:
	rm -rf $(VENV) instance .pytest_cache .mypy_cache .ruff_cache
