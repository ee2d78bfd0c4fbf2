# Two entry points for a fresh machine: `make demo` and `make test`.
# Both build the pinned virtual environment first (python3 >= 3.11).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-resync docs stackset clean

$(STAMP): requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/run.py

bench-resync: $(STAMP)
	$(BIN)/python bench/run.py resync

docs: $(STAMP)
	$(BIN)/mkdocs build --strict

# The provider for a service-managed StackSet (docs/rollout.md): plain CloudFormation in
# dist/stackset/template.json and the code archives to upload to each region's bucket.
stackset: $(STAMP)
	$(BIN)/sam build
	$(BIN)/python scripts/stackset.py

clean:
	rm -rf $(VENV) .aws-sam .pytest_cache .mypy_cache .ruff_cache .hypothesis site dist
