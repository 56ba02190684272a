# Two commands do all the set-up on a fresh machine:  make demo  and  make test
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Offline copies of WikiText-2 / C4 next to the checkout, when present (else the demo explains its fallback).
DATA_DIR ?= $(firstword $(wildcard ../shared/data))

.PHONY: demo test venv clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/regprune demo $(if $(DATA_DIR),--data-dir $(DATA_DIR))

test: $(VENV)/.installed
	$(BIN)/python -m pytest tests -q

clean:
	rm -rf $(VENV) .pytest_cache
