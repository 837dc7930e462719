#!/usr/bin/env bash
# The test command: set up, lint and type checks (scripts/lint.sh: ruff, mypy, vermin for
# Python 3.10, hadolint), then every test (unit + integration). CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/lint.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
exec .venv/bin/python -m pytest -q --timeout=900 "$@"
