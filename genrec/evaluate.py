"""Evaluate a trained run on held-out last items: recall@10 and NDCG@10 for each method.

    genrec-evaluate                          # latest run of the default config
    genrec-evaluate --run artifacts/runs/small-001
    genrec-evaluate --movielens path/to/u.data --config tiny   # trains on that file, then evaluates

Methods: popularity, SASRec, ANN only, generation only, the full cascade (compression as
configured, on by default) and the cascade with history compression on and off. The table is
printed and written to ``bench/results/quality.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from genrec.artifacts import DEFAULT_ROOT, latest_run, machine, now_iso, versions, write_json
from genrec.bundle import ModelBundle, load_bundle
from genrec.data.schema import Dataset
from genrec.data.split import leave_last_out
from genrec.heldout import heldout_requests
from genrec.models.sasrec import left_pad
from genrec.reference import ReferencePipeline
from genrec.settings import named_config
from genrec.train import load_dataset, train

K = 10
BATCH = 32


def metrics_at_k(ranked: list[np.ndarray], targets: np.ndarray, k: int = K) -> tuple[float, float]:
    hits, ndcg = [], []
    for r, t in zip(ranked, targets):
        pos = np.flatnonzero(np.asarray(r[:k]) == t)
        hits.append(float(pos.size > 0))
        ndcg.append(1.0 / np.log2(pos[0] + 2) if pos.size else 0.0)
    return float(np.mean(hits)), float(np.mean(ndcg))


def dataset_of(bundle: ModelBundle) -> Dataset:
    m = bundle.manifest
    ds = load_dataset(bundle.cfg, m.get("movielens_path"))
    if ds.content_hash() != m["data_hash"]:
        raise RuntimeError(f"data hash {ds.content_hash()} differs from the run's {m['data_hash']}: the data changed since training")
    return ds


def evaluate(bundle: ModelBundle, max_users: int | None = None, progress=print) -> dict:
    torch.set_num_threads(bundle.cfg.train.threads)
    ds = dataset_of(bundle)
    split = leave_last_out(ds.events)
    users = split.eligible_users[:max_users] if max_users else split.eligible_users
    reqs, targets = heldout_requests(ds, split, users, bundle.cfg.pipeline)
    order = np.argsort([len(r.history) for r in reqs], kind="stable")  # batch similar lengths
    rows: list[dict] = []

    def add(method: str, ranked: list[np.ndarray], seconds: float) -> None:
        rec, ndcg = metrics_at_k(ranked, targets)
        rows.append({"method": method, "recall@10": round(rec, 4), "ndcg@10": round(ndcg, 4), "seconds": round(seconds, 1)})
        progress(f"  {method:<28} recall@10 {rec:.4f}  ndcg@10 {ndcg:.4f}  ({seconds:.1f}s)")

    t0 = time.perf_counter()
    popular = bundle.catalogue().popular[:K]
    add("popularity", [popular] * len(reqs), time.perf_counter() - t0)

    if bundle.sasrec is not None:
        t0 = time.perf_counter()
        ranked = [np.zeros(0)] * len(reqs)
        for i in range(0, len(order), 256):
            idx = order[i : i + 256]
            seq = left_pad([reqs[j].history.item for j in idx], bundle.n_items, bundle.sasrec.max_len)
            top = torch.topk(bundle.sasrec.scores(seq), K, dim=1).indices.numpy()
            for j, t in zip(idx, top):
                ranked[j] = t
        add("sasrec", ranked, time.perf_counter() - t0)

    default_on = bundle.cfg.encoder.compression
    for compression in (default_on, not default_on):
        pipe = ReferencePipeline(bundle, compression=compression)
        t0 = time.perf_counter()
        ann, gen, cascade = ([np.zeros(0)] * len(reqs) for _ in range(3))
        for i in range(0, len(order), BATCH):
            idx = order[i : i + BATCH]
            batch = [reqs[j] for j in idx]
            enc, traces = pipe.traces(batch)
            user = enc.user.numpy()
            for b, (j, tr) in enumerate(zip(idx, traces)):
                cascade[j] = pipe.rank(tr, K)[0]
                ann[j] = np.argsort(-(bundle.item_vectors @ user[b]), kind="stable")[:K]
                g = tr.generated
                gen[j] = g.items[np.lexsort((-bundle.items.log_popularity[g.items], -g.logprob))][:K]
            if (i // BATCH) % 25 == 0:
                progress(f"  [compression {'on' if compression else 'off'}] {min(i + BATCH, len(order))}/{len(order)} users")
        seconds = time.perf_counter() - t0
        label = "on" if compression else "off"
        if compression == default_on:
            add("ann_only", ann, seconds)
            add("generation_only", gen, seconds)
            add("cascade", cascade, seconds)
        add(f"cascade_compression_{label}", cascade, seconds)

    lengths = np.array([len(r.history) for r in reqs])
    return {
        "rows": rows,
        "dataset": bundle.manifest["dataset"],
        "data_hash": bundle.manifest["data_hash"],
        "config": bundle.cfg.name,
        "run": str(bundle.path),
        "n_users": len(reqs),
        "history_events": {"mean": float(lengths.mean()), "p50": float(np.median(lengths)), "max": int(lengths.max())},
        "compression": {
            "recent_tokens": bundle.cfg.encoder.recent_tokens,
            "block_tokens": bundle.cfg.encoder.block_tokens,
            "slots": bundle.cfg.encoder.slots,
        },
        "created": now_iso(),
        "versions": versions(),
        "machine": machine(),
    }


def format_table(result: dict) -> str:
    lines = ["| method | recall@10 | NDCG@10 |", "|---|---|---|"]
    lines += [f"| {r['method']} | {r['recall@10']:.4f} | {r['ndcg@10']:.4f} |" for r in result["rows"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="genrec-evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=None, help="run folder (default: the latest run of --config)")
    p.add_argument("--config", default=None, help="named configuration used to pick the latest run, or to train on --movielens")
    p.add_argument("--movielens", default=None, help="MovieLens u.data / ratings.dat: train a run on it, then evaluate")
    p.add_argument("--artifacts", type=Path, default=DEFAULT_ROOT, help=f"runs folder (default {DEFAULT_ROOT})")
    p.add_argument("--max-users", type=int, default=None, help="evaluate only the first N users (quick checks)")
    p.add_argument("--out", type=Path, default=Path("bench/results/quality.json"), help="results file (default bench/results/quality.json)")
    a = p.parse_args(argv)
    if a.movielens and a.run is None:
        run = train(named_config(a.config), a.movielens, a.artifacts)
    else:
        run = a.run or latest_run(a.artifacts, named_config(a.config).name)
    print(f"[evaluate] {run}", flush=True)
    result = evaluate(load_bundle(run), a.max_users)
    print(format_table(result))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out, result)
    print(f"[evaluate] wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
