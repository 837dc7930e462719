"""History compression on vs off at history lengths 256, 1024 and 4096, side by side.

    python -m bench.history_compression                 # small run, published graphs, 30 users per length

The serving pipeline runs in process on the published ONNX graphs (the same code Triton runs;
exact ANN so both arms share the retrieval stage). Users with long histories come from the
synthetic generator with the run's catalogue (same seed, so the same items; only the users
differ): each user's first L events are the history and event L+1 the held-out target. Per user:
a cold visit with L-1 events (builds and caches the encoder state), then the measured returning
visit with the L-th event. Writes bench/results/history_compression.json and a plot.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from genrec.artifacts import latest_run, machine, now_iso, versions, write_json
from genrec.bundle import load_bundle
from genrec.data.synthetic import generate
from genrec.ensemble.catalogue import Catalogue
from genrec.ensemble.encoder_cache import EncoderCache
from genrec.ensemble.onnx_sessions import OnnxSessionRunner
from genrec.ensemble.request_types import RecommendRequest
from genrec.ensemble.request_validation import validate_options
from genrec.ensemble.retrieval import ExactIndex
from genrec.ensemble.serving_pipeline import ServingPipeline
from genrec.ensemble.serving_setup import load_setup
from genrec.heldout import history_slice


def long_users(cfg, length: int, n_users: int):
    data = replace(cfg.data, n_users=n_users, history_median=float(length + 1), history_min=length + 1, history_max=length + 1)
    return generate(data)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--run", type=Path, default=None, help="trained run (default: latest small)")
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--users", type=int, default=30, help="users per length")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    a = p.parse_args(argv)
    run = a.run or latest_run(name="small")
    b = load_bundle(run)
    versions_dir = sorted((a.repository / "recommend").glob("[0-9]*"), key=lambda d: int(d.name))[-1]
    setup = load_setup(versions_dir, environ={})
    outputs = setup.outputs()
    runner = OnnxSessionRunner({m: setup.graph_path(m) for m in outputs}, outputs, threads=1)
    cat = Catalogue.from_bundle(b)
    rows = []
    for length in a.lengths:
        ds = long_users(b.cfg, length, a.users)
        if not np.array_equal(ds.item_metadata.category, b.items.category):
            raise SystemExit("the generator's catalogue differs from the run's: cannot reuse the trained models")
        users = []
        offsets = ds.events.user_offsets()
        for u in range(a.users):
            s, e = int(offsets[u]), int(offsets[u + 1])
            if e - s < length + 1:
                continue
            users.append(
                (
                    history_slice(ds, s, s + length),
                    int(ds.events.item[s + length]),
                    int(ds.events.timestamp[s + length]),
                    int(ds.users.segment[u]),
                    int(ds.events.device[s + length]),
                )
            )
        options = validate_options(b.cfg.pipeline)
        for compression in (True, False):
            pipe = ServingPipeline(b.cfg, cat, runner, ExactIndex(cat.item_vectors), EncoderCache(2**34), compression=compression)
            cold, warm, hits, mem = [], [], 0, []
            for i, (h, target, t, seg, dev) in enumerate(users):
                uid = f"L{length}-{i}"
                r0 = RecommendRequest(h.head(length - 1), options, seg, dev, ctx_time=int(h.timestamp[-1]), user_id=uid)
                t0 = time.perf_counter()
                pipe.recommend(r0)
                cold.append((time.perf_counter() - t0) * 1e3)
                r1 = RecommendRequest(h, options, seg, dev, ctx_time=t, user_id=uid)
                t0 = time.perf_counter()
                rec = pipe.recommend(r1)
                warm.append((time.perf_counter() - t0) * 1e3)
                hits += target in rec.items
                mem.append(rec.stage_counts["memory_entries"])
            state_bytes = pipe.encoder_cache.stats.bytes / max(1, pipe.encoder_cache.stats.entries)
            row = {
                "history_length": length,
                "compression": compression,
                "users": len(users),
                "returning_p50_ms": float(np.median(warm)),
                "returning_mean_ms": float(np.mean(warm)),
                "cold_p50_ms": float(np.median(cold)),
                "recall_at_10": hits / max(1, len(users)),
                "decoder_memory_entries": float(np.mean(mem)),
                "state_bytes_per_user": state_bytes,
            }
            rows.append(row)
            print(
                f"[compression] L={length} {'on ' if compression else 'off'}: returning p50 {row['returning_p50_ms']:.1f} ms, "
                f"cold p50 {row['cold_p50_ms']:.1f} ms, recall@10 {row['recall_at_10']:.3f}, memory {row['decoder_memory_entries']:.0f}, "
                f"state {state_bytes / 1e3:.0f} KB",
                flush=True,
            )

    def pick(length: int, comp: bool) -> dict:
        return next(r for r in rows if r["history_length"] == length and r["compression"] == comp)

    lo, hi = min(a.lengths), max(a.lengths)
    ratios = {
        f"returning_{hi}_over_{lo}_{'on' if c else 'off'}": pick(hi, c)["returning_p50_ms"] / pick(lo, c)["returning_p50_ms"]
        for c in (True, False)
    }
    result = {
        "machine": machine(),
        "versions": versions(),
        "created": now_iso(),
        "run": str(run),
        "graphs": {m: str(setup.graph_path(m)) for m in outputs},
        "method": "in-process serving pipeline on the published ONNX graphs, 1 onnxruntime thread, exact ANN; returning visit = 1 new event on a cached state",
        "rows": rows,
        "ratios": ratios,
        "goal": "compression makes the 4096 returning request cost at most ~2x the 256 one",
    }
    a.out.mkdir(parents=True, exist_ok=True)
    write_json(a.out / "history_compression.json", result)
    print(json.dumps(ratios, indent=2))
    plot(a.out / "history_compression.png", rows, a.lengths)
    return 0


def plot(path: Path, rows: list[dict], lengths: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for comp, style in ((True, "o-"), (False, "s--")):
        rs = [next(r for r in rows if r["history_length"] == n and r["compression"] == comp) for n in lengths]
        label = "compression on" if comp else "compression off"
        ax1.plot(lengths, [r["returning_p50_ms"] for r in rs], style, label=label)
        ax2.plot(lengths, [r["recall_at_10"] for r in rs], style, label=label)
    for ax, title in ((ax1, "returning user, 1 new event: p50 ms"), (ax2, "recall@10")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("history length (events)")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
