# The commands a newcomer runs. Everything installs itself (tools/setup.sh) on first use.
VENV ?= $(CURDIR)/.venv
BIN := $(VENV)/bin
export PATH := $(BIN):$(PATH)

.PHONY: setup lint test unit demo faults bench image
setup:
	@VENV=$(VENV) tools/setup.sh

lint: setup
	ruff check operator tests benchmarks
	ruff format --check operator tests benchmarks
	mypy
	lint-imports
	vemigrate crds --check --also charts/ve-migrate/crds

# All tiers this machine can run; pytest's summary (-ra) names every skipped test and why. Two
# pytest runs at once, each on a lab of its own (tools/test.sh); VEMIGRATE_TEST_SPLIT=0: one run.
test: lint
	tools/test.sh

unit: setup
	pytest -m unit

# The product end to end on this machine: a real kube-apiserver and etcd, two lab hypervisor hosts,
# the operator, and one live migration of a running guest, shown phase by phase.
demo: setup
	vemigrate demo

# Performance figures of this machine (benchmarks/): the table is printed and written into
# docs/performance.md. Not part of `make test` or CI. QUICK=1: one repetition each, smaller inputs;
# BASELINE=<git revision>: the same with that revision's operator too, for before/after.
bench: setup
	python -m benchmarks $(if $(QUICK),--quick) $(if $(BASELINE),--baseline $(BASELINE))

# The fault-injection suite (tests/faults), every scenario FAULT_RUNS times; prints the table of
# invariants and writes it into docs/reliability.md. `make test` runs each scenario once.
FAULT_RUNS ?= 3
faults: setup
	VEMIGRATE_FAULT_RUNS=$(FAULT_RUNS) VEMIGRATE_FAULT_TABLE=$(CURDIR)/docs/reliability.md pytest tests/faults

# The operator's image without Docker, Podman or a registry: a Debian 12 root filesystem (mmdebstrap),
# the project's wheels, packed as an OCI archive in ~/.cache/vemigrate/image/ (VEMIGRATE_IMAGE_DIR);
# prints its path, size and digest. The Containerfile builds the same image (docs/install.md).
image: setup
	@VENV=$(VENV) tools/image.sh
