# vbo-mirror: `make demo` runs the main job on a built-in local dataset; `make test` runs the tests;
# `make bench` runs the sync throughput benchmark (benchmarks/RESULTS.md); `make reliability` the
# reliability battery (benchmarks/RELIABILITY.md).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench reliability clean test-slurm test-allensdk

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

# The network tests run a real forward proxy, Debian's tinyproxy (tinyproxy-bin: the binary
# alone, no service), installed here when missing and root; elsewhere those tests are skipped.
test: install
	@command -v tinyproxy >/dev/null || PATH="$$PATH:/usr/sbin:/sbin" command -v tinyproxy >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q tinyproxy-bin >/dev/null; }; } || \
	  echo "make test: tinyproxy not installed (needs root and apt-get): the proxy tests will be skipped"
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

# AllenSDK 2.16.2 against trees vbo-mirror made, on the sandbox (tests/allensdk/README.md):
# from_local_cache offline, the tables side by side, from_s3_cache through a counting proxy,
# compare_manifests. AllenSDK gets a venv of its own, .venv-allensdk (Python 3.11: it pins
# numpy<1.24 and pandas==1.5.3, vbo-mirror needs pandas>=2.1), built on first use (~2 min)
# and again when tests/allensdk/requirements.txt changes; the check runs from the dev venv.
# Two halves, Visual Behavior Ophys (check_allensdk.py) then Neuropixels (check_vbn.py): both run,
# both must pass. ALLENSDK_ARGS go to both (check_vbn.py takes check_allensdk.py's flags), VBN_ARGS
# to the VBN half only (e.g. VBN_ARGS="--vbn-versions 0.3.0 0.5.0").
test-allensdk: install
	@if [ ! -f .venv-allensdk/.installed ] || [ tests/allensdk/requirements.txt -nt .venv-allensdk/.installed ]; then \
	  $(PY) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || \
	    { echo "test-allensdk: AllenSDK 2.16.2 needs Python 3.11 (numpy<1.24 has no wheels for newer ones); run with PY=python3.11" >&2; exit 1; }; \
	  echo "building .venv-allensdk (allensdk==2.16.2)"; \
	  $(PY) -m venv .venv-allensdk && echo '*' > .venv-allensdk/.gitignore && \
	  .venv-allensdk/bin/python -m pip install --quiet -r tests/allensdk/requirements.txt && \
	  touch .venv-allensdk/.installed; \
	fi
	@ophys=0; vbn=0; \
	$(BIN)/python tests/allensdk/check_allensdk.py --allensdk-python .venv-allensdk/bin/python $(ALLENSDK_ARGS) || ophys=$$?; \
	$(BIN)/python tests/allensdk/check_vbn.py --allensdk-python .venv-allensdk/bin/python $(ALLENSDK_ARGS) $(VBN_ARGS) || vbn=$$?; \
	[ $$ophys = 0 ] && [ $$vbn = 0 ] || { echo "test-allensdk: Ophys check exit $$ophys, VBN check exit $$vbn" >&2; exit 1; }

clean:
	rm -rf $(VENV) .venv-allensdk demo-cache .pytest_cache
