# The README's two commands: `make demo` and `make test`. Both work from a fresh
# clone: they create the virtualenv, install the project, and fetch Kafka's jars
# from Maven Central on first use (cached under ~/.cache/paystream).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
QUIX_VENV := .venv-quix

.PHONY: demo test lint install clean dev-up dev-down bench bench-quix

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "paystream needs Python >= 3.11, found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/paystream demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(STAMP) $(QUIX_VENV)/.installed lint
	$(BIN)/pytest

# The Quix Streams peer of `paystream bench pipeline`, in a virtualenv of its own
# (see pyproject.toml, optional dependency "quix").
$(QUIX_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(QUIX_VENV)
	$(QUIX_VENV)/bin/pip install --quiet --upgrade pip
	$(QUIX_VENV)/bin/pip install --quiet -e '.[quix]'
	@touch $@

bench-quix: $(QUIX_VENV)/.installed

dev-up: $(STAMP)
	$(BIN)/paystream dev up

dev-down: $(STAMP)
	$(BIN)/paystream dev down

clean:
	-$(BIN)/paystream dev down
	rm -rf $(VENV) $(QUIX_VENV) .paystream .pytest_cache .mypy_cache .ruff_cache
