# The commands a newcomer runs. Everything installs itself (tools/setup.sh) on first use.
VENV ?= $(CURDIR)/.venv
BIN := $(VENV)/bin
export PATH := $(BIN):$(PATH)

.PHONY: setup lint test unit
setup:
	@VENV=$(VENV) tools/setup.sh

lint: setup
	ruff check operator tests
	ruff format --check operator tests
	mypy
	lint-imports
	vemigrate crds --check

# All tiers this machine can run; pytest's summary (-ra) names every skipped test and why.
test: lint
	pytest

unit: setup
	pytest -m unit
