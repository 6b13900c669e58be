# Set-up and entry points. `make demo` and `make test` work from a fresh clone:
# they build the virtual environment (.venv) from nothing on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Torch is installed first and separately so that a CPU-only machine can pick a CPU build
# (e.g. TORCH_SPEC='torch --index-url https://download.pytorch.org/whl/cpu'). The default
# is the release this project is tested with.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: venv test test-slow demo data system-deps clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[test,all]'
	touch $(STAMP)

test: $(STAMP) system-deps
	$(PY) -m pytest -q tests

test-slow: $(STAMP) system-deps
	$(PY) -m pytest -q -m slow tests

# espeak-ng (Debian package) for the synthetic speech corpus; installs only when missing
system-deps:
	-bash scripts/install_system_deps.sh

data: $(STAMP) system-deps
	PYTHON=$(abspath $(PY)) bash scripts/make_synthetic_corpus.sh

demo: $(STAMP) system-deps
	PYTHON=$(abspath $(PY)) bash scripts/demo.sh

clean-venv:
	rm -rf $(VENV)
