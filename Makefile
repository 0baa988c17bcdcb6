# The two commands of the README: `make setup` (once) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test lint bench zoo

setup:
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[torch,server,audio,dev]'

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(VENV)/bin/pytest

bench:
	$(PY) benchmarks/cpu_encode.py

zoo:
	$(PY) scripts/generate_zoo.py
