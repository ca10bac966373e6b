# `make run`: the service, its blackbox and node exporters, Prometheus and Alertmanager on this machine
# (no Docker); Ctrl-C stops all.
# `make drill`: in a second terminal, 3 minutes of 40% outlier traffic to the running stack.
# `make test`: create the virtual environment, install everything and run every test.
# `make test-fast`: the same without the tests that start real servers (markers e2e and serving).
# `make lint`: ruff (lint and format) and mypy with the pydantic plugin, as CI runs them before the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_INSTALL := $(VENV)/bin/pip install --quiet
MODEL_DIR ?= models
PYTEST_ARGS ?=
# Test processes (pytest-xdist), a test module each at a time: most of the real-server tests wait on
# Prometheus' scrape and evaluation intervals, so three share two cores well (15 min instead of 26).
TEST_WORKERS ?= 3
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist loadfile

# The Debian packages `make run` runs besides Prometheus and Alertmanager (which ensure-debian-packages
# always checks); the tests also validate docker-compose.yml with docker-compose and use chromium.
RUN_PACKAGES := prometheus-node-exporter prometheus-blackbox-exporter

.PHONY: run drill test test-fast bench train lint generate clean debian-packages

# `make run` installs what it and its tour run: the service, training, the stack and `service logs`
# (no test tools, no docker-compose).
run: $(VENV)/.installed-run $(MODEL_DIR)/metadata.json
	./scripts/ensure-debian-packages $(RUN_PACKAGES)
	$(PY) -m stack run

drill: $(VENV)/.installed-run $(MODEL_DIR)/metadata.json
	$(PY) -m service traffic --scenario outliers --duration 180 --model-dir $(MODEL_DIR)

test: $(VENV)/.installed debian-packages
	$(PY) -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

test-fast: $(VENV)/.installed debian-packages
	$(PY) -m pytest $(PYTEST_PARALLEL) -m "not e2e and not serving" $(PYTEST_ARGS)

bench: $(VENV)/.installed $(MODEL_DIR)/metadata.json
	./scripts/ensure-debian-packages wrk
	$(PY) -m bench

train: $(VENV)/.installed-run
	$(PY) -m service train --output $(MODEL_DIR)

# Every generated file, inputs first: the Kubernetes objects hold the rules and the dashboards.
generate: $(VENV)/.installed
	$(PY) prometheus/generate_rules.py
	$(PY) grafana/generate_dashboards.py
	$(PY) deploy/kubernetes/generate.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy  # files and plugin: [tool.mypy] in pyproject.toml

$(MODEL_DIR)/metadata.json: $(VENV)/.installed-run
	$(PY) -m service train --output $(MODEL_DIR)

$(VENV)/bin/pip:
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip

# Editable installs: the code is read from this folder.
$(VENV)/.installed-run: pyproject.toml | $(VENV)/bin/pip
	$(PIP_INSTALL) -e '.[train,stack,logs]'
	touch $@

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/pip
	$(PIP_INSTALL) -e '.[test]'
	touch $@ $(VENV)/.installed-run

debian-packages:
	./scripts/ensure-debian-packages $(RUN_PACKAGES) docker-compose chromium

clean:
	rm -rf .run $(MODEL_DIR)
