# Every command a newcomer needs; `make` (or `make help`) lists them. The scripts are the source
# of truth (CI runs scripts/test.sh through .ci/run); these targets only name them.
.DEFAULT_GOAL := help
.PHONY: help setup hooks demo test lint format bench up down clean

VENV ?= .venv
BIN := $(VENV)/bin
BENCHES := $(sort $(filter-out __init__,$(basename $(notdir $(wildcard bench/*.py)))))

help: ## list the commands
	@echo "usage: make <target>"
	@awk 'BEGIN {FS = ":.*## "} /^[a-z%-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: ## create .venv, install requirements.txt and the project (scripts/setup.sh)
	bash scripts/setup.sh

hooks: ## install the pre-commit hooks (.pre-commit-config.yaml: the lint checks, offline)
	$(BIN)/pre-commit install

demo: ## set up, train `small` (CONFIG=tiny for ~2 min), evaluate, publish, serve on Triton
	bash scripts/demo.sh

test: ## the test command CI runs: setup, lint and type checks, every test (scripts/test.sh)
	bash scripts/test.sh

lint: ## ruff check + ruff format --check + mypy + vermin (Python 3.10) + hadolint (scripts/lint.sh)
	bash scripts/lint.sh

format: ## apply ruff's import sorting and formatting
	$(BIN)/ruff check --select I --fix .
	$(BIN)/ruff format .

bench: ## list the benchmarks; run one with `make bench-<name>` (python -m bench.<name>)
	@echo "benchmarks (results in bench/results/):"
	@for b in $(BENCHES); do echo "  make bench-$$b    ($(BIN)/python -m bench.$$b)"; done

bench-%: ## run one benchmark: python -m bench.<name>
	$(BIN)/python -m bench.$*

up: ## start the serving stack (genrec-stack up)
	$(BIN)/genrec-stack up

down: ## stop the serving stack (genrec-stack down)
	$(BIN)/genrec-stack down

clean: ## remove caches and build outputs (keeps .venv, artifacts/ runs and published versions)
	rm -rf build dist .pytest_cache .ruff_cache .mypy_cache .hypothesis *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
