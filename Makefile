# Two commands on a fresh machine:  `make demo` (set up + run the demo)  and  `make test`.
# Setup steps leave stamp files in the venv, so a second `make setup` with nothing changed is instant.

VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTHON ?= $(shell command -v python3.11 || command -v python3)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONUNBUFFERED := 1

DEPS_STAMP       := $(VENV)/.stamp-deps
INTERFACES_STAMP := $(VENV)/.stamp-interfaces
PACKAGE_STAMP    := $(VENV)/.stamp-package
INTERFACE_FILES  := $(shell find interfaces -type f -not -name '*.pyc')

.PHONY: setup test lint demo bench clean

setup: $(PACKAGE_STAMP)

$(DEPS_STAMP): requirements.txt requirements-nodeps.txt requirements-dev.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -c constraints.txt -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	touch $@

$(INTERFACES_STAMP): $(DEPS_STAMP) tools/build_interfaces.sh $(INTERFACE_FILES)
	tools/build_interfaces.sh $(VENV)
	touch $@

$(PACKAGE_STAMP): $(INTERFACES_STAMP) setup.py setup.cfg package.xml
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

lint: setup
	$(VENV)/bin/ruff check frozen_vlm_perception test launch tools

test: setup lint
	$(PY) -m pytest

demo: setup
	$(VENV)/bin/fvp demo

bench: setup
	$(VENV)/bin/fvp bench

clean:
	rm -rf build $(VENV) .pytest_cache
