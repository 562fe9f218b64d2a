# citynerve: the two commands a new user needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all lint bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "citynerve needs Python >= 3.11 (found $$($(PYTHON) --version))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,embedded-broker]'
	@touch $@

## demo: a demo city (hub on SQLite, a local broker, two Modbus cabinets, two gateways)
demo: $(STAMP)
	$(PY) demo/run_demo.py

## test: the whole test suite, in parallel (Mosquitto must be installed: apt-get install mosquitto)
test: $(STAMP)
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || \
	  { echo "the tests start their own Mosquitto: install it first (sudo apt-get install mosquitto)"; exit 1; }
	$(PY) -m pytest -n auto -q

## test-all: also the long soak tests
test-all: $(STAMP)
	$(PY) -m pytest -n auto -q -m ""

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
