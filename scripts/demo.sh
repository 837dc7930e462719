#!/usr/bin/env bash
# The main job, end to end: set up, train the default config, evaluate it, count its FLOPs,
# publish it into model_repository/, start the real Triton server and query every model.
#   CONFIG=tiny bash scripts/demo.sh     # a ~2 minute version
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${CONFIG:-small}
HTTP_PORT=${GENREC_TRITON_HTTP_PORT:-8000}
bash scripts/setup.sh
.venv/bin/genrec-train --config "$CONFIG"
.venv/bin/genrec-evaluate --config "$CONFIG"
.venv/bin/genrec-model-card
RUN=$(.venv/bin/python -c "from genrec.artifacts import latest_run; print(latest_run(name='$CONFIG'))")
if [ "$CONFIG" != small ]; then
  # the committed configs are for `small`; a demo of another config uses its own repository
  REPO=build/model_repository_$CONFIG
  RESULTS=build/exporters_$CONFIG.json  # bench/results/ holds the default config's figures
  .venv/bin/genrec-publish --write-configs "$CONFIG" --repository "$REPO"
else
  REPO=model_repository
  RESULTS=bench/results/exporters.json
fi
.venv/bin/genrec-publish --run "$RUN" --repository "$REPO" --results "$RESULTS"
.venv/bin/genrec-triton --repository "$REPO" --log build/triton.log &
TRITON=$!
trap 'kill $TRITON 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do curl -fsS "localhost:$HTTP_PORT/v2/health/ready" >/dev/null 2>&1 && break; sleep 1; done
for m in ugt_encoder decoder_cross_kv decoder_step ranker; do
  printf '[demo] %-17s ' "$m"; curl -fsS "localhost:$HTTP_PORT/v2/models/$m" | head -c 120; echo
done
curl -fsS "localhost:$((HTTP_PORT + 2))/metrics" | grep -m3 '^nv_inference_request_success' || true
kill "$TRITON"; wait "$TRITON" || true
trap - EXIT
echo "[demo] done: Triton served every model from $REPO (log: build/triton.log)"
