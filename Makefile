# Set-up on a fresh clone: `make demo` (main job) or `make test` (test suite).
# Both create .venv if missing and install the package with pinned versions; the install is
# skipped while pyproject.toml and constraints.txt are unchanged (stamp file in .venv).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.distree-install-stamp
# Keep CPU thread pools small: the test machines have 2 cores.
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
# Test workers (pytest-xdist): most of the suite's time is subprocesses of one thread each, so
# two workers on two cores take it from about 5 minutes to about 3. A module's tests stay on one
# worker (--dist loadscope), so its fixtures are made once.
TEST_WORKERS ?= 2

.PHONY: test demo bench lint install clean

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -c constraints.txt -e ".[train,dev,test]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -x -q -n $(TEST_WORKERS) --dist loadscope

demo: $(STAMP)
	$(BIN)/python -m experiments.benchmark --quick

bench: $(STAMP)
	$(BIN)/python -m experiments.bench_env

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache
