# Two entry points do all set-up on a fresh machine: `make demo` (the main job) and `make test`.
# Needs: python3 (3.11+) with venv, Java 17+, Maven 3.6+ (jars come from Maven Central on first use).
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup demo test unit stack-up stack-down stack-status clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,notebook]'
	touch $@

demo: setup                      ## the demo pipeline on the native stack
	$(BIN)/logpipe demo

test: setup                      ## every test: unit, integration, e2e, faults (starts the native stack)
	$(BIN)/pytest $(PYTEST_ARGS)

unit: setup                      ## fast tests, no services
	$(BIN)/pytest -m unit $(PYTEST_ARGS)

stack-up: setup
	$(BIN)/logpipe stack up
stack-down: setup
	$(BIN)/logpipe stack down
stack-status: setup
	$(BIN)/logpipe stack status

clean:
	-$(BIN)/logpipe stack down --wipe
	rm -rf .logpipe
