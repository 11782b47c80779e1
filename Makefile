# Two entry points do all set-up on a fresh machine: `make demo` (the main job) and `make test`.
# Needs python3 (3.11+) and GNU make; `deps` (.ci/deps) installs with apt-get whatever else is missing: Java 17+,
# Maven (jars come from Maven Central on first use), python3-venv, and for `test` chromium.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
PYTEST_ARGS ?=
DEMO_ARGS ?=
# pip itself pinned (its resolver decides what the constraints leave open); the build backend: pyproject.toml
PIP_VERSION := 26.3

.PHONY: deps test-deps setup constraints demo test unit stack-up stack-down stack-status mutants clean

deps:                            ## system packages (apt-get, as root or via sudo; only what is missing)
	PYTHON=$(PYTHON) bash .ci/deps
test-deps: deps                  ## + chromium for tests/e2e/test_hdfs_ui_browser.py
	PYTHON=$(PYTHON) bash .ci/deps --test

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt | deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q pip==$(PIP_VERSION)
	$(BIN)/pip install -q -c constraints.txt -e '.[spark,dev,notebook]'
	touch $@

constraints: | deps              ## pin every installed version again (after changing pyproject.toml's pins)
	test -x $(BIN)/pip || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[spark,dev,notebook,mutants]'
	{ sed -n '/^#/p' constraints.txt; $(BIN)/pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	touch $(VENV)/.installed

demo: setup                      ## the demo pipeline on the native stack (flags: DEMO_ARGS="--fresh ...")
	$(BIN)/logpipe demo $(DEMO_ARGS)

test: test-deps setup            ## every test: unit, integration, e2e, faults (starts the native stack)
	$(BIN)/pytest $(PYTEST_ARGS)

unit: setup                      ## fast tests, no services
	$(BIN)/pytest -m unit $(PYTEST_ARGS)

stack-up: setup
	$(BIN)/logpipe stack up
stack-down:                      ## needs no set-up: without $(VENV) nothing started here runs, unless pids/ says so
	@d="$${LOGPIPE_RUN_DIR:-.logpipe}"; if [ -x $(BIN)/logpipe ]; then $(BIN)/logpipe stack down; \
	  elif [ -n "$$(ls -A "$$d"/pids 2>/dev/null)" ]; then echo "$$d/pids holds service records (its services may" \
	    "still run) but there is no $(BIN)/logpipe to stop them: make setup, then make stack-down" >&2; exit 1; \
	  else echo "no $(BIN)/logpipe: nothing to stop"; fi
stack-status:
	@if [ -x $(BIN)/logpipe ]; then $(BIN)/logpipe stack status; else echo "no $(BIN)/logpipe: the stack was never set up here (make stack-up)"; exit 3; fi

mutants: setup                   ## mutation testing of the domain modules by the unit tests (~10 min; mutants/)
	$(BIN)/pip install -q -c constraints.txt -e '.[mutants]'
	rm -rf mutants
	$(BIN)/mutmut run
	$(BIN)/mutmut results

clean:                           ## stop the stack, then delete what it keeps in its run folder (kept if a service would not stop)
	@# without $(VENV) nothing is installed just to clean; a stack it started (records under pids/) is refused
	d="$${LOGPIPE_RUN_DIR:-.logpipe}" && if [ -x $(BIN)/logpipe ]; then $(BIN)/logpipe stack down --wipe; \
	  elif [ -n "$$(ls -A "$$d"/pids 2>/dev/null)" ]; then echo "$$d/pids holds service records but there is no" \
	    "$(BIN)/logpipe to stop them: make setup, then make clean" >&2; exit 1; fi && \
	  rm -rf "$$d"/jars "$$d"/conf "$$d"/aot "$$d"/logs "$$d"/pids "$$d"/producer "$$d"/stack.lock \
	    "$$d"/demo-verify.json && { rmdir "$$d" 2>/dev/null || true; }  # data/: the services' part, by --wipe
