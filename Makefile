# The few commands a person types. Each creates .venv and installs the project when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
PROTOS := $(wildcard protos/selfmodel/v1/*.proto)
# The hot modules run compiled by mypyc where a C compiler is available (sync/native.py says
# which, and never lets a stale build run); any change to what they are compiled against rebuilds.
NATIVE := $(VENV)/.native
NATIVE_INPUTS := $(wildcard node/*.py sync/*.py protos/selfmodel/v1/*.pyi) tools/build_native.py

.PHONY: run test test-meta protos lint bench clean

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

$(NATIVE): $(INSTALLED) $(NATIVE_INPUTS)
	$(PY) tools/build_native.py
	touch $@

run: $(NATIVE)
	$(VENV)/bin/selfmodel cluster up

test: $(NATIVE)
	$(PY) -m pytest

# Checks of the tests themselves (pytest marker meta): each fault test fails with the fault
# proxies passing everything through, and each mutant of tests/mutations.py is caught.
test-meta: $(NATIVE)
	$(PY) -m pytest -m meta

protos: $(INSTALLED)
	$(PY) protos/generate.py

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(NATIVE)
	$(PY) benchmarks/node_latency.py

clean:
	rm -rf $(VENV) data build *.so node/*.so sync/*.so
