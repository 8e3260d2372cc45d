# linkedge: make run | make test | make check | make bench | make mutation
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test check bench mutation clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/linkedge demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/python -m loadtests.bench

# Mutation testing (docs/testing.md): the modules and tests are in pyproject.toml's
# [tool.mutmut]. A fresh run each time; MUTANTS='edge.http.*' runs only those mutants.
# Prints the survivors, then the count per module and status. Not part of `make test`.
MUTANTS ?=
mutation: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,mutation]'
	rm -rf mutants
	$(BIN)/mutmut run $(MUTANTS) > /dev/null
	$(BIN)/mutmut results
	@echo "per module (survived = a missing test or an equivalent mutant, see docs/testing.md):"
	@$(BIN)/mutmut results --all true \
	  | sed -E 's/^ +([a-z_.]+)\.x[^:]*: (.*)$$/\1 \2/' | sort | uniq -c

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache mutants
