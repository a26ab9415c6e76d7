# proxyd: the two set-up commands are `make run` and `make test` (as root on Debian).
SHELL := /bin/bash
# The Python the venv is made from: .ci/find-python picks one >= 3.12 (PYTHON=… overrides).
# VENV=… gives a second venv beside it (.ci/run tests the other supported Python that way).
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config/proxyd.yaml

# Debian packages: what proxyd needs to run, and the real clients and servers the tests drive.
# haproxy: the load balancer in front of two replicas; systemd: `systemd-analyze verify`;
# libnss3-tools: certutil puts the test CA of the TLS listener into Chromium's NSS database.
RUN_DEBS := python3-venv ca-certificates
TEST_DEBS := curl git wget openssh-client openssh-server squid apache2-utils iproute2 prometheus chromium \
             nodejs \
             libcurl4-openssl-dev libssl-dev build-essential \
             haproxy systemd \
             wrk nginx-light libnss3-tools shellcheck

NODE_DIR := tests/integration/node

.PHONY: run test lint typecheck unit integration debs-run debs-test bench clean

# A venv left by an older Python (proxyd needed 3.11 before) is made anew.
$(BIN)/proxyd: pyproject.toml
	@$(BIN)/python -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null || rm -rf $(VENV)
	test -x $(BIN)/python || { py=$$(bash .ci/find-python) && "$$py" -m venv $(VENV); }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

debs-run:
	@bash .ci/apt-install $(RUN_DEBS)

# Debian's nodejs comes without npm (its own package); NodeSource's nodejs has npm built in.
debs-test:
	@bash .ci/apt-install $(RUN_DEBS) $(TEST_DEBS)
	@command -v npm >/dev/null || bash .ci/apt-install npm

# Node's undici for the `proxyd relay` client tests, pinned by package-lock.json.
$(NODE_DIR)/node_modules: $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	cd $(NODE_DIR) && npm ci --no-audit --no-fund
	touch $@

run: debs-run $(BIN)/proxyd
	@$(BIN)/proxyd check-config $(CONFIG)
	@$(BIN)/proxyd serve --config $(CONFIG) --first-run-hint

lint: $(BIN)/proxyd
	$(BIN)/ruff check proxy tests bench
	$(BIN)/ruff format --check proxy tests bench
	$(BIN)/lint-imports

typecheck: $(BIN)/proxyd
	$(BIN)/mypy

test: debs-test $(BIN)/proxyd $(NODE_DIR)/node_modules lint typecheck
	$(BIN)/pytest -q $(PYTEST_ARGS)

# Issue 6: proxyd next to Squid and to no proxy, on loopback; ~10 minutes, as root.
# Results in build/bench/results.json; BENCH_ARGS=--smoke for the 1-round check.
bench: debs-test $(BIN)/proxyd
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .mypy_cache .ruff_cache .pytest_cache $(NODE_DIR)/node_modules
