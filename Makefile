# The two commands a newcomer needs:   make demo   and   make test
# Both set up a virtualenv (.venv) with the whole workspace installed editable and
# install the mosquitto broker with apt-get when it is missing; `make test` also installs
# what some tests drive (systemd-analyze, node + the AsyncAPI parser, Chromium).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
SUDO    = $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup broker test-tools asyncapi-parser browser demo test lint bench clean

# The AsyncAPI project's parser, for tests/test_contract_asyncapi.py (npm, into the test cache).
ASYNCAPI_PARSER_DIR ?= .pytest_cache/asyncapi-parser
ASYNCAPI_PARSER     ?= @asyncapi/parser@3.6.6

$(VENV)/.installed: pyproject.toml drivers/modbus/pyproject.toml drivers/opcua/pyproject.toml drivers/gcode/pyproject.toml sim_devices/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "cellctl needs Python 3.11 or newer")'
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip' 2>/dev/null || \
	  { $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]" -e drivers/modbus -e drivers/opcua -e drivers/gcode -e sim_devices
	@touch $@

setup: $(VENV)/.installed

broker:
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || { \
	  echo "installing mosquitto (apt-get)"; \
	  $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mosquitto; }

# systemd-analyze checks the unit; node and npm run the AsyncAPI project's parser.
test-tools:
	@missing=""; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	{ command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; } || missing="$$missing nodejs npm"; \
	[ -z "$$missing" ] || { echo "installing$$missing (apt-get)"; \
	  $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; }

asyncapi-parser: test-tools
	@if command -v npm >/dev/null 2>&1; then \
	  [ -d $(ASYNCAPI_PARSER_DIR)/node_modules/@asyncapi/parser ] || { \
	    mkdir -p $(ASYNCAPI_PARSER_DIR) && \
	    npm install --prefix $(ASYNCAPI_PARSER_DIR) --no-audit --no-fund --silent $(ASYNCAPI_PARSER); }; \
	else echo "npm not found: the AsyncAPI parser test will be skipped (CI installs nodejs and npm)"; fi

# Debian's Chromium and its driver for the status page's browser test (CI installs them;
# without them that one test is skipped and says why).
browser:
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || { \
	  echo "installing chromium and chromium-driver (apt-get)"; \
	  $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver; }

demo: setup broker
	$(VENV)/bin/cellctl demo

# Two workers: most of a test is waiting on brokers, devices and daemons, so two halve the
# wall time even on two cores; the tests that build cellctl from this checkout share one.
test: setup broker test-tools asyncapi-parser browser
	$(VENV)/bin/pytest -n 2 --dist loadgroup

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: setup broker
	$(PY) bench/modbus_pipeline.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
