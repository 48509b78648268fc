# Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
HOST   ?= 127.0.0.1
PORT   ?= 5000

.PHONY: demo demo-workers test lint docs bench clean system-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=25.1"
	$(BIN)/python -m pip install -q -e . --group dev --group bench --group docs
	touch $(STAMP)

## Run the example app (a 2D-to-3D generation backend) on http://$(HOST):$(PORT)
demo: $(STAMP)
	$(BIN)/python -m example_app --host $(HOST) --port $(PORT)

## The example as in production: Redis, a Celery worker and the web app (logs/web, logs/worker)
demo-workers: $(STAMP)
	$(BIN)/python -m example_app.stack --host $(HOST) --port $(PORT)

## Debian's chromium for the browser tests (installed when run as root; otherwise they skip)
system-deps:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium for the browser tests"; \
	    apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "note: /usr/bin/chromium is missing, the browser tests will skip" \
	         "(sudo apt-get install chromium)" >&2; \
	  fi; \
	fi

## Run the whole test suite (no tests collected counts as a failure)
test: $(STAMP) system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: treating as a failure" >&2; exit 1; fi; \
	exit $$rc

## ruff (lint + format check) and mypy --strict on the package
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## Build the documentation (Sphinx + MyST) into docs/_build/html; warnings are errors
docs: $(STAMP)
	$(BIN)/sphinx-build -W --keep-going -n -b html docs docs/_build/html

## Benchmarks against bare Flask, measured in the same run (not part of the tests)
bench: $(STAMP)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache logs
