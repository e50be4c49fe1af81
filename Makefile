# vbo-mirror: `make demo` runs the main job on a built-in local dataset; `make test` runs the tests;
# `make bench` runs the sync throughput benchmark (benchmarks/RESULTS.md); `make reliability` the
# reliability battery (benchmarks/RELIABILITY.md).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench reliability clean test-slurm

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

# The benchmark: vbo-mirror beside s5cmd, rclone, aws-cli (and AllenSDK with --allensdk) on a
# local SeaweedFS, plus the scenarios of issue 6; writes benchmarks/RESULTS.md and results.png.
# Needs root for the emulated WAN (network namespaces); BENCH_ARGS="--no-wan" skips it,
# BENCH_ARGS="--quick" checks that everything runs (small data, one run each).
BENCH_DEBS := rclone iptables iproute2 curl linux-perf
bench: install
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	@for c in rclone iptables ip curl perf; do command -v $$c >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(BENCH_DEBS); fi
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

# The reliability battery: faults (cut, 500, 503 SlowDown, corrupt, stall), kill -9, a full
# disk (a tmpfs: needs root, else skipped), concurrent runs, hostile manifests and caches,
# against moto on 127.0.0.1; writes benchmarks/RELIABILITY.md (~6 min on 2 cores).
reliability: install
	$(BIN)/python benchmarks/reliability.py

# The Slurm pre-staging recipe (configs/slurm/) end to end on this machine: munged, slurmctld
# and slurmd on localhost with a generated config in a temp dir, a 3-task array of
# prestage.sbatch against the sandbox, then verify.sbatch; checks bytes and that no object is
# fetched twice across shards. Installs Debian's slurm-wlm and munge if missing (needs root).
test-slurm: install
	@for c in sbatch slurmctld slurmd munged; do PATH="$$PATH:/usr/sbin:/sbin" command -v $$c >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge; fi
	$(BIN)/python tests/slurm/prestage_check.py

clean:
	rm -rf $(VENV) demo-cache .pytest_cache
