#!/usr/bin/env bash
# Lint and type checks (the test command runs them before pytest; `make lint` runs them alone):
# ruff lint + format check, mypy ([tool.mypy] in pyproject.toml), vermin (no code needs a Python
# newer than 3.10, the tritonserver:24.10 image's), hadolint on the Dockerfile.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
step() { echo "[lint] $*"; "$@"; }
step "$BIN/ruff" check .
step "$BIN/ruff" format --check .
step "$BIN/python" scripts/typecheck.py
step "$BIN/vermin" -q -t=3.10- --violations --eval-annotations --no-tips genrec ensemble exporters client runtime feed ads
step "$BIN/hadolint" Dockerfile
echo "[lint] ok"
