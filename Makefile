# The project's vocabulary. `make run` and `make test` are all a fresh clone needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test check lint fmt migrate bench screenshot clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall only when the dependencies change.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed  ## serve on SQLite with the built-in Exotel simulator
	$(BIN)/exocall migrate
	$(BIN)/exocall serve --host $(HOST) --port $(PORT)

migrate: $(VENV)/.installed
	$(BIN)/exocall migrate

test: $(VENV)/.installed-dev  ## the whole suite on SQLite, and on PostgreSQL when TEST_DATABASE_URL is set
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

check: lint test  ## everything CI runs

bench: $(VENV)/.installed-dev  ## benchmarks on the local PostgreSQL; they print figures, never pass or fail
	$(BIN)/python -m bench.callback_ingest
	$(BIN)/python -m bench.callback_cost
	$(BIN)/python -m bench.dispatch_rate

screenshot: $(VENV)/.installed-dev  ## docs/ui.png, by the status page's browser test (needs Chromium)
	UI_SCREENSHOT=$(CURDIR)/docs/ui.png $(BIN)/pytest \
		'tests/test_ui.py::test_in_chromium_a_person_sees_the_calls_and_a_calls_timeline[sqlite]'

fmt: $(VENV)/.installed-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache exocall.db*
