# vbo-mirror: `make demo` runs the main job on a built-in local dataset; `make test` runs the tests;
# `make bench` runs the sync throughput benchmark (benchmarks/RESULTS.md).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

test: install
	$(BIN)/python -m pytest -q

# Throughput benchmark against a local SeaweedFS; prepends a run to benchmarks/RESULTS.md.
# Pass options with BENCH_ARGS, e.g. make bench BENCH_ARGS="--jobs 8".
bench: install
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/bench_sync.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) demo-cache .pytest_cache
