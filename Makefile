# Two commands do everything: `make run` starts the demo site, `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: install run test lint format migrate clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

migrate: install
	$(PY) manage.py migrate --noinput

# SQLite and the in-memory channel layer; nothing else to install. Sign in as demo / demo.
run: migrate
	$(PY) manage.py shell -c "from project.demo import ensure_demo_data; ensure_demo_data()"
	$(PY) manage.py runserver $(HOST):$(PORT)

# The whole suite. Redis, PostgreSQL and Chromium tests skip (saying how to enable them)
# when those are missing; .ci/run makes them present and fails on any such skip.
test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) db.sqlite3* test-db.sqlite3* staticfiles .pytest_cache .ruff_cache
