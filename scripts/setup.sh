#!/usr/bin/env bash
# Create .venv and install the project (idempotent). Needs Python 3.11 and network access to PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $PY"
  "$PY" -m venv .venv
fi
if ! command -v redis-server >/dev/null 2>&1; then
  # the real Redis (shared encoder states; later the ads frequency caps); tests start their own
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing redis-server with apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q redis-server >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q redis-server >/dev/null; }
  else
    echo "[setup] redis-server is missing and this is not root with apt: install it (apt-get install redis-server); Redis tests will skip"
  fi
fi
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  # the real Prometheus (and promtool) for the dashboards tests; they start their own on loopback
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing prometheus with apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q prometheus >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q prometheus >/dev/null; }
  else
    echo "[setup] prometheus is missing and this is not root with apt: install it (apt-get install prometheus); Prometheus tests will skip"
  fi
fi
.venv/bin/python -m pip install -q --upgrade pip
echo "[setup] installing requirements.txt"
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q --no-deps -e .
.venv/bin/python -m pip check >/dev/null || { .venv/bin/python -m pip check; exit 1; }
echo "[setup] ok: $(.venv/bin/python -c 'import torch, numpy, lightgbm; print("torch", torch.__version__, "numpy", numpy.__version__, "lightgbm", lightgbm.__version__)')"
