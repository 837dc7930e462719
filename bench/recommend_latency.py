"""Latency of ``recommend`` through the real Triton server, measured side by side in one run.

    python -m bench.recommend_latency                      # model_repository/, small run
    python -m bench.recommend_latency --users 300 --quick  # shorter

Workload: held-out users of the run (their real histories). Each user first visits with all
but their last 4 events (cold: the encoder state is built and cached), then comes back with one
new event per visit: the steady state of a returning user. Phases, each on a fresh server:

1. default server: cold visits (c=1), then returning visits at concurrency 1, 2, 4;
   per-stage means from the model's own Prometheus histograms;
2. KV cache off (``GENREC_SERVING__KV_CACHE=false``), returning visits at c=1, same outputs;
3. BLS execution (``GENREC_SERVING__EXECUTION=bls``), returning visits at c=1: the per-call
   cost of a BLS hop against in-process sessions.

Writes bench/results/recommend_latency.json, kv_cache.json, encoder_cache.json, bls_cost.json
and recommend_latency.png.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from genrec.artifacts import latest_run, machine, now_iso, versions, write_json
from genrec.bundle import load_bundle
from genrec.client.recommend_client import RecommendClient
from genrec.data.split import leave_last_out
from genrec.evaluate import dataset_of
from genrec.heldout import heldout_requests
from genrec.runtime.triton_server import TritonServer, metrics_settle_s, scrape_metrics

NEW_EVENTS = 4  # returning visits per user (one new event each)


def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "p999_ms": float(np.percentile(a, 99.9)),
        "mean_ms": float(a.mean()),
    }


class Workload:
    def __init__(self, reqs: list) -> None:
        self.reqs = reqs

    def visit(self, client: RecommendClient, u: int, cut: int, **kw):
        r = self.reqs[u]
        h = r.history
        n = len(h) - cut
        return client.recommend(
            h.item[:n],
            h.action[:n],
            h.timestamp[:n],
            h.device[:n],
            user_id=f"bench-{u}",
            segment=r.segment,
            ctx_device=r.ctx_device,
            request_time=float(h.timestamp[n - 1] + 60) if n else r.ctx_time,
            **kw,
        )


def run_visits(server: TritonServer, work: Workload, jobs: list[tuple[int, int]], concurrency: int) -> tuple[list[float], float, dict]:
    """Send (user, cut) visits with ``concurrency`` closed-loop clients; latencies in ms, wall s, items."""
    lat: list[float] = []
    out: dict[tuple[int, int], np.ndarray] = {}
    lock = threading.Lock()
    it = iter(jobs)

    def worker() -> None:
        client = RecommendClient(server.grpc_url)
        while True:
            with lock:
                job = next(it, None)
            if job is None:
                return
            t = time.perf_counter()
            res = work.visit(client, *job)
            dt = (time.perf_counter() - t) * 1e3
            with lock:
                lat.append(dt)
                out[job] = res.items

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, time.perf_counter() - t0, out


def scrape(server: TritonServer) -> str:
    """The metrics page once the requests so far are counted (custom metrics lag by a flush)."""
    return scrape_metrics(server.metrics_url, metrics_settle_s())


def stage_sums(text: str) -> dict[str, tuple[float, float]]:
    """{stage: (sum seconds, count)} from genrec_recommend_stage_duration_seconds."""
    out: dict[str, list[float]] = {}
    for m in re.finditer(r'genrec_recommend_stage_duration_seconds_(sum|count)\{[^}]*stage="(\w+)"[^}]*\} ([0-9.e+-]+)', text):
        kind, stage, v = m.group(1), m.group(2), float(m.group(3))
        out.setdefault(stage, [0.0, 0.0])[0 if kind == "sum" else 1] += v
    return {k: (v[0], v[1]) for k, v in out.items()}


def metric_total(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{") or line.startswith(name + " "))


def stage_means(before: str, after: str) -> dict[str, float]:
    a, b = stage_sums(before), stage_sums(after)
    return {s: 1e3 * (b[s][0] - a.get(s, (0, 0))[0]) / max(1.0, b[s][1] - a.get(s, (0, 0))[1]) for s in b}


def start(repo: Path, state: Path, **env: str) -> TritonServer:
    log = state / f"triton-{int(time.time())}.log"
    s = TritonServer.on_free_ports(repo, log=log, env={"GENREC_SERVING__STATE_DIR": str(state), **env})
    return s.start(timeout=300)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--run", type=Path, default=None, help="trained run whose held-out users form the workload (default: latest small)")
    p.add_argument("--users", type=int, default=400, help="distinct users (each makes 1 cold + 4 returning visits)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--quick", action="store_true", help="skip the KV-off and BLS phases")
    a = p.parse_args(argv)
    run = a.run or latest_run(name="small")
    b = load_bundle(run)
    ds = dataset_of(b)
    split = leave_last_out(ds.events)
    users = split.eligible_users
    reqs, _ = heldout_requests(ds, split, users, b.cfg.pipeline)
    reqs = [r for r in reqs if len(r.history) > NEW_EVENTS + 1][: a.users]
    work = Workload(reqs)
    n = len(reqs)
    visits = len(a.concurrency)
    if visits > NEW_EVENTS:
        raise SystemExit(f"at most {NEW_EVENTS} concurrency levels")
    state = Path(tempfile.mkdtemp(prefix="genrec-bench-"))
    meta = {"machine": machine(), "versions": versions(), "created": now_iso(), "run": str(run), "config": b.cfg.name, "users": n}
    results: dict = {}
    print(f"[bench] {n} users, repository {a.repository}, run {run}", flush=True)
    try:
        srv = start(a.repository, state)
        try:
            m0 = scrape(srv)
            lat, wall, cold_items = run_visits(srv, work, [(u, NEW_EVENTS) for u in range(n)], 1)
            m1 = scrape(srv)
            results["cold"] = {**percentiles(lat), "throughput_rps": n / wall, "stages_ms": stage_means(m0, m1)}
            print(f"[bench] cold visits c=1: p50 {results['cold']['p50_ms']:.1f} ms p99 {results['cold']['p99_ms']:.1f} ms", flush=True)
            levels = []
            first_returning = None
            for i, c in enumerate(a.concurrency):
                cut = NEW_EVENTS - 1 - i
                before = scrape(srv)
                lat, wall, items = run_visits(srv, work, [(u, cut) for u in range(n)], c)
                after = scrape(srv)
                hits = metric_total(after, "genrec_encoder_cache_hits_total") - metric_total(before, "genrec_encoder_cache_hits_total")
                row = {
                    "concurrency": c,
                    **percentiles(lat),
                    "throughput_rps": n / wall,
                    "requests": n,
                    "cache_hit_rate": hits / n,
                    "stages_ms": stage_means(before, after),
                }
                levels.append(row)
                if first_returning is None:
                    first_returning = (cut, items)
                print(
                    f"[bench] returning c={c}: p50 {row['p50_ms']:.1f} p99 {row['p99_ms']:.1f} p99.9 {row['p999_ms']:.1f} ms, {row['throughput_rps']:.1f} rps, hit rate {row['cache_hit_rate']:.2f}",
                    flush=True,
                )
        finally:
            srv.stop()
        results["levels"] = levels
        cut0, items_on = first_returning
        if not a.quick:
            # the same visits again on fresh servers: the first visit per user is cold, then the measured one
            for name, env in (("kv_off", {"GENREC_SERVING__KV_CACHE": "false"}), ("bls", {"GENREC_SERVING__EXECUTION": "bls"})):
                srv = start(a.repository, state, **env)
                try:
                    k = min(n, 100) if name == "kv_off" else n
                    run_visits(srv, work, [(u, cut0 + 1) for u in range(k)], 1)
                    before = scrape(srv)
                    lat, wall, items = run_visits(srv, work, [(u, cut0) for u in range(k)], 1)
                    after = scrape(srv)
                    same = float(np.mean([np.array_equal(items[(u, cut0)], items_on[(u, cut0)]) for u in range(k)]))
                    results[name] = {
                        **percentiles(lat),
                        "throughput_rps": k / wall,
                        "requests": k,
                        "same_top10_as_default": same,
                        "stages_ms": stage_means(before, after),
                    }
                    print(f"[bench] {name} c=1: p50 {results[name]['p50_ms']:.1f} ms, same top 10 {same:.3f}", flush=True)
                finally:
                    srv.stop()
    finally:
        shutil.rmtree(state, ignore_errors=True)
    write_outputs(a.out, meta, results, b.cfg)
    return 0


def write_outputs(out: Path, meta: dict, r: dict, cfg) -> None:
    out.mkdir(parents=True, exist_ok=True)
    c1 = r["levels"][0]
    write_json(
        out / "recommend_latency.json",
        {
            **meta,
            "workload": f"returning users, 1 new event per visit (encoder state cached), {cfg.pipeline.beam_widths} beams, "
            f"{cfg.pipeline.ann_candidates} ANN, {cfg.pipeline.max_candidates}->{cfg.pipeline.prerank_keep}->{cfg.pipeline.final_k}",
            "levels": [{k: v for k, v in row.items()} for row in r["levels"]],
            "goal_p99_ms_at_concurrency_1": 50.0,
            "goal_met": c1["p99_ms"] <= 50.0,
        },
    )
    write_json(
        out / "encoder_cache.json",
        {
            **meta,
            "cold_first_visit": r["cold"],
            "returning_1_new_event": {k: c1[k] for k in ("p50_ms", "p99_ms", "mean_ms", "stages_ms", "cache_hit_rate")},
            "encode_stage_ratio_cold_over_returning": r["cold"]["stages_ms"]["encode"] / c1["stages_ms"]["encode"],
            "latency_ratio_p50_cold_over_returning": r["cold"]["p50_ms"] / c1["p50_ms"],
        },
    )
    if "kv_off" in r:
        write_json(
            out / "kv_cache.json",
            {
                **meta,
                "kv_cache_on": {k: c1[k] for k in ("p50_ms", "p99_ms", "mean_ms", "stages_ms")},
                "kv_cache_off": r["kv_off"],
                "generate_stage_speedup": r["kv_off"]["stages_ms"]["generate"] / c1["stages_ms"]["generate"],
                "p50_speedup": r["kv_off"]["p50_ms"] / c1["p50_ms"],
            },
        )
    if "bls" in r:
        write_json(
            out / "bls_cost.json", {**meta, "in_process": {k: c1[k] for k in ("p50_ms", "p99_ms", "mean_ms", "stages_ms")}, "bls": r["bls"]}
        )
    plot(out / "recommend_latency.png", r)
    print(f"[bench] wrote {out}/recommend_latency.json (+ encoder_cache, kv_cache, bls_cost, png)")


def plot(path: Path, r: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    cs = [row["concurrency"] for row in r["levels"]]
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")):
        ax1.plot(cs, [row[key] for row in r["levels"]], marker="o", label=label)
    ax1.axhline(50, color="grey", linestyle="--", label="p99 goal (c=1)")
    ax1.set_xlabel("concurrency")
    ax1.set_ylabel("ms")
    ax1.set_title("recommend latency (returning users)")
    ax1.legend()
    cases = [("cold", r["cold"]), ("returning", r["levels"][0])] + [(k, r[k]) for k in ("kv_off", "bls") if k in r]
    stages = ("encode", "generate", "retrieve", "prerank", "rank")
    bottom = np.zeros(len(cases))
    for s in stages:
        v = np.array([c["stages_ms"].get(s, 0.0) for _, c in cases])
        ax2.bar([c for c, _ in cases], v, bottom=bottom, label=s)
        bottom += v
    ax2.set_ylabel("mean ms inside the model (c=1)")
    ax2.set_title("per-stage breakdown")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
