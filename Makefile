# linkedge: make run | make test | make check | make bench | make bench-workers | make bench-stalls
#           | make hostile | make mutation
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run
# Extra `linkedge demo` options, e.g. make run ARGS='--geoip dbip-city-lite.mmdb'
ARGS ?=

.PHONY: run test check bench bench-workers bench-stalls hostile mutation clean

# What running needs: linkedge and its runtime dependencies, no dev toolchain.
$(RUN_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $(RUN_STAMP)

# What testing needs: the dev extra (pytest, hypothesis, ruff, mypy, mmdb-writer) too.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP) $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/linkedge demo $(ARGS)

# The tests start hundreds of linkedge processes: compiled once here, each starts sooner
# (even where PYTHONDONTWRITEBYTECODE is set).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m compileall -q -j 0 edge admin geo tests loadtests > /dev/null
	$(BIN)/python -m pytest -q

check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/python -m loadtests.bench

# The workers/collector layout on one core vs nginx (issue 12: sustained rate, paced p99,
# hot path, CPU per process, capacity model, kill -9 faults; ~10 min), and the collector's
# event-loop stalls (issue 10; ~3 min). Each rewrites its own section of docs/benchmarks.md;
# WORKERS_ARGS=--quick / STALLS_ARGS=--quick for a short smoke run that leaves the docs alone.
WORKERS_ARGS ?=
STALLS_ARGS ?=
bench-workers: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/python -m loadtests.workers $(WORKERS_ARGS)

bench-stalls: $(STAMP)
	$(BIN)/python -m loadtests.stalls $(STALLS_ARGS)

# Attacks and faults against a real server, plus the fuzzer (not part of `make test`):
# make hostile HOSTILE_ARGS=--quick   (or --only slowloris,kill9, --fuzz-seconds 30, --list)
HOSTILE_ARGS ?=
hostile: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,fuzz]'
	$(BIN)/python -m loadtests.hostile $(HOSTILE_ARGS)

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
