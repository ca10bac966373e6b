# `make run`: the service, Prometheus and Alertmanager on this machine (no Docker).
# `make test`: create the virtual environment, install everything and run every test.
# `make test-fast`: the same without the tests that start real servers (markers e2e and serving).
# `make lint`: ruff (lint and format) and mypy with the pydantic plugin, as CI runs them before the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL_DIR ?= models
PYTEST_ARGS ?=

.PHONY: run test test-fast bench train lint generate clean debian-packages

run: $(VENV)/.installed $(MODEL_DIR)/metadata.json debian-packages
	$(PY) -m stack run

test: $(VENV)/.installed debian-packages
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(VENV)/.installed debian-packages
	$(PY) -m pytest -m "not e2e and not serving" $(PYTEST_ARGS)

bench: $(VENV)/.installed $(MODEL_DIR)/metadata.json
	./scripts/ensure-debian-packages wrk
	$(PY) -m bench

train: $(VENV)/.installed
	$(PY) -m service train --output $(MODEL_DIR)

# Every generated file, inputs first: the Kubernetes objects hold the rules and the dashboards.
generate: $(VENV)/.installed
	$(PY) grafana/generate_dashboards.py
	$(PY) deploy/kubernetes/generate.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy  # files and plugin: [tool.mypy] in pyproject.toml

$(MODEL_DIR)/metadata.json: $(VENV)/.installed
	$(PY) -m service train --output $(MODEL_DIR)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

debian-packages:
	./scripts/ensure-debian-packages docker-compose chromium

clean:
	rm -rf .run $(MODEL_DIR)
