#!/usr/bin/env bash
# The main job, end to end: set up; train the default config (or reuse its latest run); bring the
# whole stack up on loopback (genrec-stack up: publish to the model repository if needed, Triton,
# redis-server seeded with the run's users, the BentoML feed service); ask for a user's feed,
# click an item with its event token, show the next feed; say where the docs, metrics and logs are.
#   CONFIG=tiny bash scripts/demo.sh     # a ~2 minute version
#   .venv/bin/genrec-stack down          # stops what it started (by pid, nothing else)
# Running it again reuses the run, the published version and the running servers.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${CONFIG:-small}
bash scripts/setup.sh
# bench/results/ holds the default config's figures; another config's go to build/
OUT=bench/results
RESULTS=bench/results/exporters.json
[ "$CONFIG" = small ] || { OUT=build/results_$CONFIG; RESULTS=$OUT/exporters.json; mkdir -p "$OUT"; }
latest() { .venv/bin/python -c "from genrec.artifacts import latest_run; print(latest_run(name='$CONFIG'))" 2>/dev/null; }
if RUN=$(latest); then
  echo "[demo] reusing $RUN (a new one: .venv/bin/genrec-train --config $CONFIG)"
else
  .venv/bin/genrec-train --config "$CONFIG"
  RUN=$(latest)
  .venv/bin/genrec-evaluate --run "$RUN" --exclude-seen --out "$OUT/quality.json"  # the protocol of the README's table
  .venv/bin/genrec-model-card --out "$OUT/model_card.json"
fi
# publishes (with the exporter summary) only if the repository's recommend does not serve $RUN yet
.venv/bin/genrec-stack up --config "$CONFIG" --run "$RUN" --results "$RESULTS"
.venv/bin/genrec-stack demo
echo "[demo] done. The stack keeps running; stop it with: .venv/bin/genrec-stack down"
