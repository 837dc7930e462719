"""Dot-product pre-rank against the target-aware pre-ranker (issue #10): recall and latency.

    python -m bench.prerank_compare --run default=artifacts/runs/tiny-003 --run realistic=artifacts/runs/tiny-004

For each data set, the given run and a copy of it whose cascade is fitted again behind the other
pre-ranker (``genrec.train.refit_cascade``: same encoder, decoder, semantic IDs; its own pre-rank
and ranker), so both pre-rankers are compared behind the same generative models:

1. quality (``genrec.evaluate``, ``--exclude-seen``): share of held-out targets kept among the
   100 after pre-rank, and the cascade's final recall@10 / NDCG@10;
2. the pre-rank stage alone, in process on the published ONNX graphs (``ServingPipeline``,
   1 onnxruntime thread, exact ANN): ms p50/p99 over the held-out users' requests;
3. the whole ``recommend`` request through the real Triton server (Milvus-lite ANN, the
   published versions as they are served): each user's cold first visit, then returning visits
   with one new event each at concurrency 1: p50/p99, and the server's own pre-rank stage mean.

Training and evaluation run outside the lock; the timed phases (2, 3) hold ``--lock``
(``flock``, shared with the other benchmarks of this machine). Writes
``bench/results/prerank_compare.json``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from genrec.artifacts import machine, now_iso, versions, write_json

MODES = ("dot", "target_attention")


@contextmanager
def bench_lock(path: Path) -> Iterator[float]:
    """Hold the machine's benchmark lock (as ``flock PATH``); yields the seconds waited."""
    t0 = time.perf_counter()
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield time.perf_counter() - t0
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def runs_per_mode(run: Path, progress=print) -> dict[str, Path]:
    """The run for its own pre-rank, and a refit copy for the other one (reused when one exists)."""
    from genrec.train import refit_cascade

    cfg = json.loads((run / "config.json").read_text())
    own = cfg["pipeline"].get("prerank", "dot")
    out = {own: run}
    for mode in MODES:
        if mode in out:
            continue
        for sibling in sorted(run.parent.iterdir()):
            m = sibling / "manifest.json"
            if m.exists() and json.loads(m.read_text()).get("refit_from") == str(run):
                if json.loads((sibling / "config.json").read_text())["pipeline"].get("prerank") == mode:
                    out[mode] = sibling
        if mode not in out:
            progress(f"[refit] {run} -> pre-rank {mode}")
            out[mode] = refit_cascade(run, {"pipeline.prerank": mode})
    return out


def quality(run: Path, max_users: int | None, prerank: str | None = None) -> dict:
    from genrec.bundle import load_bundle
    from genrec.evaluate import evaluate

    res = evaluate(load_bundle(run), max_users, progress=lambda m: None, exclude_seen=True, compression_off=False, prerank=prerank)
    row = next(r for r in res["rows"] if r["method"] == "cascade")
    fit = json.loads((run / "metrics.json").read_text())["cascade_fit"]
    return {
        "recall@100_after_prerank": res["stage_shares"]["prerank"]["all"],
        "candidates_share": res["stage_shares"]["candidates"]["all"],
        "recall@10": row["recall@10"],
        "ndcg@10": row["ndcg@10"],
        "stage_shares": res["stage_shares"],
        "other_rows": {r["method"]: r["recall@10"] for r in res["rows"] if not r["method"].startswith("cascade")},
        "n_users": res["n_users"],
        "validation": {
            "dot_recall@100": fit.get("prerank_recall"),
            "target_recall@100_held_out_folds": (fit.get("target_prerank") or {}).get("oof_recall"),
            "target_epochs": (fit.get("target_prerank") or {}).get("epochs"),
            "target_fit_seconds": (fit.get("target_prerank") or {}).get("seconds"),
            "ranker_check": fit.get("ranker_check"),
        },
    }


def workload(run: Path, users: int) -> list:
    from genrec.bundle import load_bundle
    from genrec.data.split import leave_last_out
    from genrec.evaluate import dataset_of
    from genrec.heldout import heldout_requests

    b = load_bundle(run)
    ds = dataset_of(b)
    split = leave_last_out(ds.events)
    reqs, _ = heldout_requests(ds, split, split.eligible_users, b.cfg.pipeline, exclude_seen=True)
    return [r for r in reqs if len(r.history) > 5][:users]


def pct(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3), "n": int(a.size)}


def in_process_stage(version: Path, reqs: list, repeats: int) -> dict:
    """The pre-rank stage (and the whole request) in process on the published graphs."""
    from genrec.ensemble.serving_setup import build_pipeline, load_setup

    pipe = build_pipeline(load_setup(version, environ={"GENREC_SERVING__ANN": "exact", "GENREC_SERVING__ORT_THREADS": "1"}))
    pre, total = [], []
    for rep in range(repeats + 1):
        for r in reqs:
            rec = pipe.recommend(r)
            if rep:  # the first pass warms the sessions
                pre.append(rec.stage_ms["prerank"])
                total.append(sum(rec.stage_ms.values()))
    return {"mode": pipe.prerank_mode, "prerank": pct(pre), "request": pct(total)}


def through_triton(repo: Path, reqs: list, returning: int, **env: str) -> tuple[dict, dict]:
    """Cold first visits, then ``returning`` visits per user (one new event each), c=1; the
    latencies of the returning ones, the server's stage means, and the last round's items."""
    from bench.recommend_latency import Workload, run_visits, scrape, stage_means, start

    state = Path(tempfile.mkdtemp(prefix="genrec-prerank-"))
    srv = start(repo, state, **env)
    try:
        work = Workload(reqs)
        n = len(reqs)
        run_visits(srv, work, [(u, returning) for u in range(n)], 1)  # cold first visits (states built)
        lat: list[float] = []
        before = scrape(srv)
        items: dict = {}
        for cut in range(returning - 1, -1, -1):
            got, _, items = run_visits(srv, work, [(u, cut) for u in range(n)], 1)
            lat += got
        after = scrape(srv)
        return {"recommend": pct(lat), "stages_ms": {k: round(v, 3) for k, v in stage_means(before, after).items()}}, items
    finally:
        srv.stop()
        shutil.rmtree(state, ignore_errors=True)


def bls_check(repo: Path, reqs: list, items: dict) -> dict:
    """The same visits (cut 0) on a server with BLS execution: each graph call, target_prerank's
    included, is a BLS request to the served model. Same answers as in-process sessions?"""
    _, got = through_triton(repo, reqs, 1, GENREC_SERVING__EXECUTION="bls")
    same = sum(np.array_equal(got[k], items[k]) for k in got if k in items)
    return {"users": len(reqs), "same_top_k": int(same)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.prerank_compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--run", action="append", required=True, metavar="NAME=RUN", help="a data set's name and its trained run (repeatable)")
    p.add_argument("--max-users", type=int, default=None, help="evaluate only the first N held-out users")
    p.add_argument("--users", type=int, default=150, help="users of the latency workloads")
    p.add_argument("--repeats", type=int, default=2, help="passes over the users for the in-process stage timing")
    p.add_argument("--returning", type=int, default=2, help="returning visits per user through Triton (after the cold one)")
    p.add_argument("--bls-users", type=int, default=20, help="users whose answers are compared with BLS execution (0: skip)")
    p.add_argument(
        "--reuse-quality", type=Path, default=None, help="take each data set's quality figures from this earlier result (latency only)"
    )
    p.add_argument("--lock", type=Path, default=Path("/tmp/genrec-bench.lock"), help="the machine's benchmark lock (flock)")
    p.add_argument("--out", type=Path, default=Path("bench/results/prerank_compare.json"))
    a = p.parse_args(argv)
    from genrec.exporters.publish import publish_run, version_numbers

    t_all = time.perf_counter()
    result: dict = {"created": now_iso(), "machine": machine(), "versions": versions(), "datasets": {}, "p99_budget_ms": 50.0}
    for spec in a.run:
        name, _, path = spec.partition("=")
        runs = runs_per_mode(Path(path).resolve())
        ds: dict = {"runs": {m: str(r) for m, r in runs.items()}}
        if a.reuse_quality is not None:
            old = json.loads(a.reuse_quality.read_text())["datasets"][name]
            if old["runs"] != ds["runs"]:
                raise SystemExit(f"{a.reuse_quality}: {name} was measured on other runs ({old['runs']})")
            for key in (*MODES, "target_attention_fixed_epochs"):
                ds[key] = {"quality": old[key]["quality"]}
            ds["quality_from"] = str(a.reuse_quality)
        for mode in MODES if a.reuse_quality is None else ():
            print(f"[{name}] quality, pre-rank {mode} ({runs[mode]})", flush=True)
            ds[mode] = {"quality": quality(runs[mode], a.max_users)}
            q = ds[mode]["quality"]
            print(
                f"  recall@100 after pre-rank {q['recall@100_after_prerank']:.4f}, recall@10 {q['recall@10']:.4f}, ndcg@10 {q['ndcg@10']:.4f}",
                flush=True,
            )
        # the dot run's own target pre-ranker: trained every run for train.prerank_epochs epochs without
        # held-out folds (the refit run keeps the epoch count its folds chose); its ranker is dot's
        if a.reuse_quality is None:
            print(f"[{name}] quality, the dot run's target pre-ranker", flush=True)
            ds["target_attention_fixed_epochs"] = {"quality": quality(runs["dot"], a.max_users, "target_attention")}
            q = ds["target_attention_fixed_epochs"]["quality"]
            print(f"  recall@100 after pre-rank {q['recall@100_after_prerank']:.4f}, recall@10 {q['recall@10']:.4f}", flush=True)
        reqs = workload(runs["dot"], a.users)
        work = Path(tempfile.mkdtemp(prefix="genrec-prerank-repo-"))
        try:
            repos = {}
            for mode in MODES:
                repos[mode] = work / mode / "model_repository"
                publish_run(runs[mode], repos[mode], progress=lambda m: None)
                ds[mode]["parity_max_abs_err"] = json.loads(
                    (
                        repos[mode] / "target_prerank" / str(version_numbers(repos[mode] / "target_prerank")[-1]) / "manifest.json"
                    ).read_text()
                )["parity"]["max_abs_err"]
            for mode in MODES:
                version = repos[mode] / "recommend" / str(version_numbers(repos[mode] / "recommend")[-1])
                with bench_lock(a.lock) as waited:
                    load_before = load_average()
                    t0 = time.perf_counter()
                    stage = in_process_stage(version, reqs, a.repeats)
                    triton, items = through_triton(repos[mode], reqs, a.returning)
                    ds[mode]["latency"] = {
                        "in_process": stage,
                        "triton": triton,
                        "load_average_before": load_before,
                        "load_average_after": load_average(),
                        "lock_wait_s": round(waited, 1),
                        "seconds": round(time.perf_counter() - t0, 1),
                    }
                assert stage["mode"] == mode, f"{mode}: the served pipeline pre-ranks by {stage['mode']}"
                if mode == "target_attention" and a.bls_users:  # not timed: outside the lock
                    k = min(a.bls_users, len(reqs))
                    ds[mode]["bls_check"] = bls_check(repos[mode], reqs[:k], {key: v for key, v in items.items() if key[0] < k})
                    print(f"[{name}] BLS execution: {ds[mode]['bls_check']}", flush=True)
                print(
                    f"[{name}] {mode}: pre-rank stage p50 {stage['prerank']['p50_ms']:.2f} / p99 {stage['prerank']['p99_ms']:.2f} ms in process;"
                    f" recommend through Triton p50 {triton['recommend']['p50_ms']:.1f} / p99 {triton['recommend']['p99_ms']:.1f} ms"
                    f" (load {load_before})",
                    flush=True,
                )
        finally:
            shutil.rmtree(work, ignore_errors=True)
        d, t = ds["dot"], ds["target_attention"]
        ds["target_wins_recall"] = t["quality"]["recall@100_after_prerank"] > d["quality"]["recall@100_after_prerank"]
        ds["target_within_budget"] = t["latency"]["triton"]["recommend"]["p99_ms"] <= result["p99_budget_ms"]
        result["datasets"][name] = ds
    result["seconds"] = round(time.perf_counter() - t_all, 1)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out, result)
    print("| data | pre-rank | recall@100 after pre-rank | recall@10 | ndcg@10 | pre-rank ms p50/p99 | recommend ms p50/p99 (Triton) |")
    print("|---|---|---|---|---|---|---|")
    for name, ds in result["datasets"].items():
        for mode in MODES:
            q, lat = ds[mode]["quality"], ds[mode]["latency"]
            pre, rec = lat["in_process"]["prerank"], lat["triton"]["recommend"]
            print(
                f"| {name} | {mode} | {q['recall@100_after_prerank']:.4f} | {q['recall@10']:.4f} | {q['ndcg@10']:.4f} |"
                f" {pre['p50_ms']:.2f} / {pre['p99_ms']:.2f} | {rec['p50_ms']:.1f} / {rec['p99_ms']:.1f} |"
            )
    print(f"[bench] wrote {a.out} in {result['seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
