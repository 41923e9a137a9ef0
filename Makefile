# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install demo test test-unit test-integration test-e2e lint bench bench-compare \
	bench-peers clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "celeriac needs Python >= 3.11"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,speed,redis,bench]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/celeriac demo

test: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) tests

test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

test-integration: $(STAMP)
	$(PY) -m pytest -q tests/integration

test-e2e: $(STAMP)
	$(PY) -m pytest -q tests/e2e

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

bench: $(STAMP)
	$(PY) bench/worker.py

# celeriac beside Celery 5 on the Redis at 127.0.0.1:6379 (database 13 is flushed; 12 counts).
bench-compare: $(STAMP)
	$(PY) bench/compare.py $(BENCH_ARGS)

# Drain rate of Huey, taskiq and Dramatiq beside celeriac on the Redis at 127.0.0.1:6379
# (database 10 is flushed; 11 counts). Quick check: make bench-peers BENCH_ARGS='--n 2000 --runs 1'
bench-peers: $(STAMP)
	$(PY) bench/peers.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
