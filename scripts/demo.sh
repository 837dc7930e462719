#!/usr/bin/env bash
# The main job, end to end: set up, train the default config, evaluate it, count its FLOPs.
#   CONFIG=tiny bash scripts/demo.sh     # a ~1 minute version
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${CONFIG:-small}
bash scripts/setup.sh
.venv/bin/genrec-train --config "$CONFIG"
.venv/bin/genrec-evaluate --config "$CONFIG"
.venv/bin/genrec-model-card
