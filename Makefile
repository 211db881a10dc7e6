# The few commands a person types. Each creates .venv and installs the project when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# buf (the .proto checks) and the Node.js example's packages come from npm, pinned by their
# lockfiles; without npm their tests skip.
NPM := $(shell command -v npm 2>/dev/null)
NODE_INSTALLED := $(if $(NPM),node_modules/.installed examples/node/node_modules/.installed)

.PHONY: run test test-meta protos contract-baseline lint bench clean

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

examples/node/node_modules/.installed: examples/node/package.json examples/node/package-lock.json
	cd examples/node && npm ci --no-audit --no-fund
	touch $@

run: $(INSTALLED)
	$(VENV)/bin/selfmodel cluster up

# Two workers, a test file each at a time: most tests wait on node processes, so two files
# share the machine's CPUs well (the suite takes about half as long as one at a time).
test: $(INSTALLED) $(NODE_INSTALLED)
	$(PY) -m pytest -n 2 --dist loadfile

# Checks of the tests themselves (pytest marker meta): each fault test fails with the fault
# proxies passing everything through, and each mutant of tests/mutations.py is caught.
test-meta: $(INSTALLED)
	$(PY) -m pytest -m meta

protos: $(INSTALLED)
	$(PY) protos/generate.py

# At a release only: the contract `buf breaking` holds every later change to (tests/unit/test_buf.py).
contract-baseline: node_modules/.installed
	node_modules/.bin/buf build --exclude-source-info -o protos/released.binpb

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(INSTALLED)
	$(PY) -m benchmarks.node_latency

clean:
	rm -rf $(VENV) data build node_modules examples/node/node_modules
