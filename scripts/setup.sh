#!/usr/bin/env bash
# Create .venv and install the project (idempotent). Needs Python 3.11 and network access to PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $PY"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
echo "[setup] installing requirements.txt"
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q --no-deps -e .
.venv/bin/python -m pip check >/dev/null || { .venv/bin/python -m pip check; exit 1; }
echo "[setup] ok: $(.venv/bin/python -c 'import torch, numpy, lightgbm; print("torch", torch.__version__, "numpy", numpy.__version__, "lightgbm", lightgbm.__version__)')"
