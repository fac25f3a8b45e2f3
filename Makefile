# Crucible Control. `make run` starts the whole dashboard; `make test` checks everything CI checks.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
# pip runs again only when pyproject.toml is newer than this stamp.
STAMP := $(VENV)/.installed
VAR_DIR ?= var
CHROMIUM ?= /usr/bin/chromium
PYTEST_ARGS ?=
# A marker expression selecting part of the suite (CI: .ci/run); empty runs everything.
MARKERS ?=
# Development mode for make's commands (run, migrate, demo, checks); DEBUG is off unless set.
export DEBUG ?= 1
# python3.11, else python3 when it is 3.11 or newer.
BOOTSTRAP_PYTHON ?= $(shell command -v python3.11 2>/dev/null || \
	{ python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && command -v python3; })

.PHONY: help install run test lint types checks pytest migrate demo bench clean distclean

help:
	@echo "make run        create .venv, install, migrate, load the demo and start everything on http://127.0.0.1:8000"
	@echo "make test       ruff, mypy, manage.py check, makemigrations --check, pytest (what CI runs)"
	@echo "make lint       ruff check + ruff format --check + lint-imports (layer contracts)"
	@echo "make types      mypy"
	@echo "make migrate    apply database migrations"
	@echo "make demo       create the demo login and demo experiments (idempotent)"
	@echo "make bench      run the benchmarks; one JSON line per figure (see BENCHMARKS.md)"
	@echo "make clean      remove caches and generated files (keeps .venv and the database)"
	@echo "make distclean  also remove .venv and var/ (the SQLite database, Redis data, artifacts)"

$(PY):
	@if [ -z "$(BOOTSTRAP_PYTHON)" ]; then \
		echo "Python 3.11 or newer is needed: install python3.11 (or make python3 >= 3.11)"; exit 1; fi
	$(BOOTSTRAP_PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

install: $(STAMP)

run: install
	@mkdir -p $(VAR_DIR)
	$(PY) -m crucible_ui.launcher

migrate: install
	@mkdir -p $(VAR_DIR)
	$(PY) manage.py migrate

demo: migrate
	$(PY) manage.py demo

bench: install
	$(PY) bench/run_all.py

lint: install
	@echo "== ruff check"
	$(VENV)/bin/ruff check .
	@echo "== ruff format --check"
	$(VENV)/bin/ruff format --check .
	@echo "== lint-imports (layers and no cycles: the contracts in pyproject.toml)"
	$(VENV)/bin/lint-imports

types: install
	@echo "== mypy"
	$(VENV)/bin/mypy .

checks: install
	@mkdir -p $(VAR_DIR)
	@echo "== manage.py check"
	$(PY) manage.py check
	@echo "== manage.py makemigrations --check"
	$(PY) manage.py makemigrations --check --dry-run

define BROWSER_SKIPPED
	echo; \
	echo "################################################################################"; \
	echo "##  BROWSER TESTS SKIPPED: $(CHROMIUM) is not installed."; \
	echo "##  The e2e tests (Playwright + Chromium) did not run. To run them:"; \
	echo "##      apt-get install -y chromium   (as root; then: make test)"; \
	echo "##  In CI (CI=true) they always run, and a missing Chromium fails the build."; \
	echo "################################################################################"; \
	echo
endef

# Exit status 5 (no tests collected) fails like any other: a suite that ran nothing is no pass.
pytest: install
	@echo "== pytest"
	@if [ -x "$(CHROMIUM)" ]; then \
		$(PY) -m pytest $(if $(MARKERS),-m "$(MARKERS)") $(PYTEST_ARGS); rc=$$?; \
	elif [ "$${CI:-}" = "true" ]; then \
		echo "CI=true but $(CHROMIUM) is missing: the browser tests must run in CI (.ci/run installs it)"; \
		exit 1; \
	else \
		$(BROWSER_SKIPPED); \
		$(PY) -m pytest -m "not e2e$(if $(MARKERS), and ($(MARKERS)))" $(PYTEST_ARGS); rc=$$?; \
		$(BROWSER_SKIPPED); \
	fi; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure"; fi; \
	exit $$rc

test: lint types checks pytest

clean:
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
	rm -rf .mypy_cache .ruff_cache .pytest_cache test-results build dist *.egg-info
	rm -rf $(VAR_DIR)/static $(VAR_DIR)/celerybeat-schedule* $(VAR_DIR)/test.sqlite3*

distclean: clean
	rm -rf $(VENV) $(VAR_DIR)
