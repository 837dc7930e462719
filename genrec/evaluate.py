"""Evaluate a trained run on held-out last items: recall@10 and NDCG@10 for each method.

    genrec-evaluate                          # latest run of the default config
    genrec-evaluate --run artifacts/runs/small-001
    genrec-evaluate --movielens path/to/u.data --config tiny   # trains on that file, then evaluates
    genrec-evaluate --data realistic --exclude-seen          # latest run on the rating-shaped preset

Methods: popularity, SASRec, ANN only, generation only, transitions only (the items that
followed the user's latest events in training traffic), the full cascade (compression as
configured, on by default) and the cascade with history compression on and off. The table is
printed and written to ``bench/results/quality.json`` (``quality_realistic.json`` for a run on
the realistic preset; ``--out`` to change). ``--exclude-seen`` (default on for MovieLens-format
input) removes each user's earlier items from every method's ranking; the table then also
shows where the cascade loses the target (candidates, pre-rank, final, by source).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from genrec.artifacts import DEFAULT_ROOT, latest_run, machine, now_iso, runs, versions, write_json
from genrec.batching import event_tokens, token_batches
from genrec.bundle import ModelBundle, load_bundle
from genrec.data.schema import Dataset
from genrec.data.split import leave_last_out
from genrec.ensemble.cascade import CascadeTrace, follows_only
from genrec.heldout import heldout_requests
from genrec.models.sasrec import left_pad
from genrec.reference import ReferencePipeline
from genrec.settings import DATA_PRESETS, named_config
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


def default_exclude_seen(bundle: ModelBundle) -> bool:
    """On for MovieLens-format input (an item is rated at most once), off otherwise."""
    return bundle.manifest.get("movielens_path") is not None


# the table's rows (the compression ones: the cascade with compression as configured, and flipped)
METHODS = (
    "popularity",
    "sasrec",
    "ann_only",
    "generation_only",
    "transitions_only",
    "cascade",
    "cascade_compression_on",
    "cascade_compression_off",
)
STAGES = ("candidates", "prerank", "final")
SOURCES = ("all", "generation", "ann", "transitions")


def stage_hits(tr: CascadeTrace, final: np.ndarray, target: int) -> np.ndarray:
    """(stage, [any, generation, ANN, transitions]) indicators of where one request's target
    still is: among the merged candidates (~1000), the pre-rank's kept ones (100), the final list
    (10), and which source found it (generation: in the beams; ANN: among the user's neighbours;
    transitions: among the items that followed the user's latest events)."""
    out = np.zeros((len(STAGES), len(SOURCES)))
    c = tr.candidates
    at = np.flatnonzero(c.items == target)
    if at.size:
        i = int(at[0])
        row = (1.0, float(c.in_gen[i]), float(c.in_ann[i]), float(c.in_follow[i]))
        out[0] = row
        if np.any(tr.kept == i):
            out[1] = row
        if np.any(np.asarray(final) == target):
            out[2] = row
    return out


def stage_shares(hits: np.ndarray, mean_candidates: float) -> dict[str, dict[str, float]]:
    """Shares of targets per stage and source from stacked ``stage_hits`` (users, stage, source)."""
    m = hits.mean(axis=0) if len(hits) else np.zeros((len(STAGES), len(SOURCES)))
    out = {s: {k: round(float(m[n, c]), 4) for c, k in enumerate(SOURCES)} for n, s in enumerate(STAGES)}
    out["candidates"]["mean_count"] = round(mean_candidates, 1)
    return out


def evaluate(
    bundle: ModelBundle,
    max_users: int | None = None,
    progress=print,
    exclude_seen: bool | None = None,
    keep_rankings: bool = False,
    compression_off: bool = True,
    prerank: str | None = None,
) -> dict:
    """Every method on the held-out last items. ``exclude_seen`` (default: on for MovieLens-format
    input) removes each user's earlier items from every method's ranking: the cascade, generation
    and ANN through the request's ``excluded`` (as serving does), popularity and SASRec by masking.
    ``keep_rankings``: the result also holds each method's top 10 per user and each user's
    excluded items (``rankings``, ``excluded``; tests). ``compression_off``: also the cascade with
    compression flipped (twice the time; the pre-rank comparison skips it). ``prerank``: "dot" or
    "target_attention" instead of the run's ``pipeline.prerank`` (its ranker stays the one fitted)."""
    torch.set_num_threads(bundle.cfg.train.threads)
    exclude_seen = default_exclude_seen(bundle) if exclude_seen is None else exclude_seen
    ds = dataset_of(bundle)
    split = leave_last_out(ds.events)
    users = split.eligible_users[:max_users] if max_users else split.eligible_users
    pc = bundle.cfg.pipeline
    reqs, targets = heldout_requests(ds, split, users, pc, exclude_seen=exclude_seen)
    batches = token_batches([event_tokens(len(r.history)) for r in reqs], pc.token_budget, BATCH)
    rows: list[dict] = []
    rankings: dict[str, list[np.ndarray]] = {}

    def add(method: str, ranked: list[np.ndarray], seconds: float) -> None:
        if keep_rankings:
            rankings[method] = [np.asarray(r[:K]) for r in ranked]
        rec, ndcg = metrics_at_k(ranked, targets)
        rows.append({"method": method, "recall@10": round(rec, 4), "ndcg@10": round(ndcg, 4), "seconds": round(seconds, 1)})
        progress(f"  {method:<28} recall@10 {rec:.4f}  ndcg@10 {ndcg:.4f}  ({seconds:.1f}s)")

    t0 = time.perf_counter()
    popular = bundle.catalogue().popular
    if exclude_seen:
        ranked_pop = [popular[: K + len(r.excluded)][~np.isin(popular[: K + len(r.excluded)], r.excluded)][:K] for r in reqs]
    else:
        ranked_pop = [popular[:K]] * len(reqs)
    add("popularity", ranked_pop, time.perf_counter() - t0)

    if bundle.sasrec is not None:
        t0 = time.perf_counter()
        ranked = [np.zeros(0)] * len(reqs)
        order = np.argsort([len(r.history) for r in reqs], kind="stable")
        for i in range(0, len(order), 256):
            idx = order[i : i + 256]
            seq = left_pad([reqs[j].history.item for j in idx], bundle.n_items, bundle.sasrec.max_len)
            scores = bundle.sasrec.scores(seq)
            if exclude_seen:
                for row, j in enumerate(idx):
                    scores[row, torch.from_numpy(reqs[j].excluded)] = -math.inf
            top = torch.topk(scores, K, dim=1).indices.numpy()
            for j, t in zip(idx, top):
                ranked[j] = t
        add("sasrec", ranked, time.perf_counter() - t0)

    default_on = bundle.cfg.encoder.compression
    shares: dict[str, dict[str, float]] = {}
    for compression in (default_on, not default_on) if compression_off else (default_on,):
        pipe = ReferencePipeline(bundle, compression=compression, prerank=prerank)
        t0 = time.perf_counter()
        ann, gen, follows, cascade = ([np.zeros(0)] * len(reqs) for _ in range(4))
        hits = np.zeros((len(reqs), len(STAGES), len(SOURCES)))
        n_candidates = 0
        done = 0
        for bi, idx in enumerate(batches):
            _, batch_traces = pipe.traces([reqs[j] for j in idx])
            for j, tr in zip(idx, batch_traces):
                cascade[j] = pipe.rank(tr, K)[0]
                c = tr.candidates
                ann[j] = c.items[c.in_ann][:K]  # the ANN neighbours, best first, minus excluded items
                follows[j] = follows_only(c, K)
                g = tr.generated
                gen[j] = g.items[np.lexsort((-bundle.items.log_popularity[g.items], -g.logprob))][:K]
                hits[j] = stage_hits(tr, cascade[j], int(targets[j]))
                n_candidates += len(c)
            done += len(idx)
            if bi % 25 == 0 or done == len(reqs):
                progress(f"  [compression {'on' if compression else 'off'}] {done}/{len(reqs)} users")
        seconds = time.perf_counter() - t0
        label = "on" if compression else "off"
        if compression == default_on:
            add("ann_only", ann, seconds)
            add("generation_only", gen, seconds)
            add("transitions_only", follows, seconds)
            add("cascade", cascade, seconds)
            shares = stage_shares(hits, n_candidates / max(len(reqs), 1))
        add(f"cascade_compression_{label}", cascade, seconds)

    lengths = np.array([len(r.history) for r in reqs])
    kept = {"rankings": rankings, "excluded": [r.excluded for r in reqs], "targets": targets} if keep_rankings else {}
    return {
        **kept,
        "rows": rows,
        "exclude_seen": exclude_seen,
        "prerank": ReferencePipeline(bundle, prerank=prerank).prerank_mode,
        "stage_shares": shares,
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
    seen = "seen items excluded" if result.get("exclude_seen") else "seen items not excluded"
    lines = [f"{result['dataset']}, {result['n_users']} users, held-out last item, {seen}", ""]
    lines += ["| method | recall@10 | NDCG@10 |", "|---|---|---|"]
    lines += [f"| {r['method']} | {r['recall@10']:.4f} | {r['ndcg@10']:.4f} |" for r in result["rows"]]
    shares = result.get("stage_shares")
    if shares:
        n = shares["candidates"].get("mean_count", 0)
        names = {"candidates": f"candidates (~{n:.0f})", "prerank": "after pre-rank (100)", "final": "final (10)"}
        lines += [
            "",
            "| cascade: targets kept at | all | found by generation | found by ANN | found by transitions |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {names[s]} | {shares[s]['all']:.4f} | {shares[s]['generation']:.4f} | {shares[s]['ann']:.4f} | {shares[s].get('transitions', 0.0):.4f} |"
            for s in STAGES
        ]
    return "\n".join(lines)


def latest_run_on(root: Path, name: str, preset: str | None) -> Path:
    """The latest run of config ``name``; with ``preset``, the latest trained on that synthetic preset."""
    if preset is None:
        return latest_run(root, name)
    found = [
        r
        for r in runs(root, name)
        if (r / "manifest.json").exists()
        and json.loads((r / "manifest.json").read_text()).get("movielens_path") is None
        and json.loads((r / "config.json").read_text())["data"].get("preset", "default") == preset
    ]
    if not found:
        raise FileNotFoundError(f"no run of {name} on the {preset} preset under {root}; run genrec-train --config {name} --data {preset}")
    return max(found, key=lambda r: (r / "manifest.json").stat().st_mtime)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="genrec-evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=None, help="run folder (default: the latest run of --config)")
    p.add_argument("--config", default=None, help="named configuration used to pick the latest run, or to train on --movielens")
    p.add_argument("--movielens", default=None, help="MovieLens u.data / ratings.dat: train a run on it, then evaluate")
    p.add_argument("--artifacts", type=Path, default=DEFAULT_ROOT, help=f"runs folder (default {DEFAULT_ROOT})")
    p.add_argument("--max-users", type=int, default=None, help="evaluate only the first N users (quick checks)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results file (default bench/results/quality.json; quality_realistic.json for a run on the realistic preset)",
    )
    p.add_argument("--data", choices=DATA_PRESETS, default=None, help="pick the latest run of --config trained on this synthetic preset")
    p.add_argument(
        "--exclude-seen",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="exclude each user's earlier items from every method's ranking (default: on for MovieLens-format input, off otherwise)",
    )
    a = p.parse_args(argv)
    if a.movielens and a.run is None:
        run = train(named_config(a.config), a.movielens, a.artifacts)
    else:
        run = a.run or latest_run_on(a.artifacts, named_config(a.config).name, a.data)
    print(f"[evaluate] {run}", flush=True)
    bundle = load_bundle(run)
    result = evaluate(bundle, a.max_users, exclude_seen=a.exclude_seen)
    print(format_table(result))
    realistic = bundle.manifest.get("movielens_path") is None and bundle.cfg.data.preset == "realistic"
    out = a.out or Path("bench/results/quality_realistic.json" if realistic else "bench/results/quality.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    print(f"[evaluate] wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
