# The few commands a person types. Each creates .venv and installs the project when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: run test test-meta protos lint bench clean

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

run: $(INSTALLED)
	$(VENV)/bin/selfmodel cluster up

# Two workers, a test file each at a time: most tests wait on node processes, so two files
# share the machine's CPUs well (the suite takes about half as long as one at a time).
test: $(INSTALLED)
	$(PY) -m pytest -n 2 --dist loadfile

# Checks of the tests themselves (pytest marker meta): each fault test fails with the fault
# proxies passing everything through, and each mutant of tests/mutations.py is caught.
test-meta: $(INSTALLED)
	$(PY) -m pytest -m meta

protos: $(INSTALLED)
	$(PY) protos/generate.py

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(INSTALLED)
	$(PY) -m benchmarks.node_latency

clean:
	rm -rf $(VENV) data build
