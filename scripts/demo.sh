#!/usr/bin/env bash
# The main job, end to end: set up, train the default config, evaluate it, count its FLOPs,
# publish it into model_repository/, start the real Triton server, query every model and get
# recommendations from `recommend` (HTTP/JSON and the gRPC client), then scrape the metrics.
#   CONFIG=tiny bash scripts/demo.sh     # a ~2 minute version
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${CONFIG:-small}
HTTP_PORT=${GENREC_TRITON_HTTP_PORT:-8000}
bash scripts/setup.sh
# bench/results/ holds the default config's figures; another config's go to build/
OUT=bench/results
[ "$CONFIG" = small ] || { OUT=build/results_$CONFIG; mkdir -p "$OUT"; }
.venv/bin/genrec-train --config "$CONFIG"
.venv/bin/genrec-evaluate --config "$CONFIG" --out "$OUT/quality.json"
.venv/bin/genrec-model-card --out "$OUT/model_card.json"
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
for m in ugt_encoder decoder_cross_kv decoder_step ranker recommend; do
  printf '[demo] %-17s ' "$m"; curl -fsS "localhost:$HTTP_PORT/v2/models/$m" | head -c 120; echo
done
# one recommendation over KServe v2 HTTP/JSON (a returning user's three events), then the same
# user again with one more event through the Python gRPC client: an encoder-cache hit
echo "[demo] recommend (HTTP/JSON):"
curl -fsS "localhost:$HTTP_PORT/v2/models/recommend/infer" -H 'Content-Type: application/json' -d '{
  "inputs": [
    {"name": "history_items", "datatype": "INT64", "shape": [3], "data": [12, 7, 42]},
    {"name": "history_actions", "datatype": "INT64", "shape": [3], "data": [0, 1, 0]},
    {"name": "history_timestamps", "datatype": "FP64", "shape": [3], "data": [1700000000, 1700000060, 1700000120]},
    {"name": "history_devices", "datatype": "INT64", "shape": [3], "data": [0, 0, 1]},
    {"name": "user_id", "datatype": "BYTES", "shape": [1], "data": ["demo-user"]}
  ],
  "parameters": {"top_k": 5}
}'; echo
.venv/bin/python - "$((HTTP_PORT + 1))" <<'PY'
import sys
from genrec.client.recommend_client import RecommendClient
r = RecommendClient(f"localhost:{sys.argv[1]}").recommend(
    [12, 7, 42, 3], [0, 1, 0, 0], [1700000000, 1700000060, 1700000120, 1700000180], [0, 0, 1, 1], user_id="demo-user", top_k=5)
print("[demo] recommend (gRPC client):", r.items.tolist(), [round(float(s), 3) for s in r.scores])
PY
curl -fsS "localhost:$((HTTP_PORT + 2))/metrics" | grep -E '^(nv_inference_request_success|genrec_encoder_cache_(hits|misses)_total)' || true
kill "$TRITON"; wait "$TRITON" || true
trap - EXIT
echo "[demo] done: Triton served every model from $REPO (log: build/triton.log)"
