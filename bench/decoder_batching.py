"""Would batching concurrent requests' decoder steps pay off here? Measured, not assumed.

    python -m bench.decoder_batching

Runs the published ``decoder_cross_kv`` and ``decoder_step`` graphs (onnxruntime, 1 thread,
as ``recommend`` runs them) with R requests in one call, R = 1, 2, 4, 8, at the default beam
widths (the steps run 1, 32 and 128 beams per request) and the compressed memory size of a `small`
request. The time per request at R > 1 against R = 1 is the most a dynamic batcher could save
(it would also add queueing delay). Writes bench/results/decoder_batching.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from genrec.artifacts import machine, now_iso, versions, write_json
from genrec.ensemble.onnx_sessions import OnnxSessionRunner
from genrec.ensemble.serving_setup import load_setup

MEMORY_ENTRIES = 83  # decoder memory of a compressed `small` request (bench/results/history_compression.json)


def timed(fn, runs: int) -> float:
    fn()
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return float(np.median(t)) * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--requests", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    a = p.parse_args(argv)
    version = sorted((a.repository / "recommend").glob("[0-9]*"), key=lambda d: int(d.name))[-1]
    setup = load_setup(version, environ={})
    cfg = setup.cfg
    outputs = setup.outputs()
    run = OnnxSessionRunner({m: setup.graph_path(m) for m in ("decoder_cross_kv", "decoder_step")}, outputs, threads=1)
    dc = cfg.decoder
    heads, dh, layers = dc.n_heads, dc.d_model // dc.n_heads, dc.n_layers
    widths = (1, *cfg.pipeline.beam_widths)
    rng = np.random.default_rng(0)
    rows = []
    for r in a.requests:
        memory = rng.normal(size=(r, MEMORY_ENTRIES, cfg.encoder.d_model)).astype(np.float32)
        bias = np.zeros((r, MEMORY_ENTRIES), np.float32)
        cross_k, cross_v = run("decoder_cross_kv", {"memory": memory})
        row = {"requests": r, "cross_kv_ms": timed(lambda m=memory: run("decoder_cross_kv", {"memory": m}), a.runs)}
        for step in range(3):
            w, w_prev = widths[step], widths[step - 1] if step else 1  # step s runs the beams kept after step s-1
            feeds = {
                "step": np.array([step], np.int64),
                "codes": rng.integers(0, 8, size=(r, w)).astype(np.int64),
                "parents": rng.integers(0, w_prev, size=(r, w)).astype(np.int64),
                "past_k": rng.normal(size=(layers, r, w_prev, heads, step, dh)).astype(np.float32),
                "past_v": rng.normal(size=(layers, r, w_prev, heads, step, dh)).astype(np.float32),
                "cross_k": cross_k,
                "cross_v": cross_v,
                "cross_bias": bias,
            }
            row[f"step{step}_ms"] = timed(lambda f=feeds: run("decoder_step", f), a.runs)
        row["total_ms"] = row["cross_kv_ms"] + sum(row[f"step{s}_ms"] for s in range(3))
        row["per_request_ms"] = row["total_ms"] / r
        rows.append(row)
    base = rows[0]["per_request_ms"]
    for row in rows:
        row["per_request_speedup_vs_1"] = base / row["per_request_ms"]
        print(
            f"[batching] R={row['requests']}: {row['total_ms']:.2f} ms per call, {row['per_request_ms']:.2f} ms per request "
            f"({row['per_request_speedup_vs_1']:.2f}x)",
            flush=True,
        )
    a.out.mkdir(parents=True, exist_ok=True)
    write_json(
        a.out / "decoder_batching.json",
        {
            "machine": machine(),
            "versions": versions(),
            "created": now_iso(),
            "graphs": {m: str(setup.graph_path(m)) for m in ("decoder_cross_kv", "decoder_step")},
            "beams": widths,
            "memory_entries": MEMORY_ENTRIES,
            "rows": rows,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
