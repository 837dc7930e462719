"""The feed's two ways to get organic items and the ads' pCTR from Triton, measured side by side.

    python -m bench.ad_round_trip                          # latest small run (else tiny), published here
    python -m bench.ad_round_trip --run artifacts/runs/tiny-001 --users 40 --rounds 3

1. **ensemble**: one gRPC call to ``feed_candidates`` (recommend -> ad_ctr inside Triton);
2. **two calls**: ``recommend`` asking for ``user_vector``, then ``ad_ctr`` on it.

The run is published into a scratch repository (or ``--repository`` is served as is) and one
Triton serves both modes. Workload: held-out users of the run with their real histories and a
``user_id`` (returning users: the encoder cache is warm after the warm-up pass), each with
``--ads`` eligible ads whose rows are built by ``genrec.ad_ctr.ad_feature_rows`` as the feed
builds them. At each concurrency the two modes alternate in rounds over the same requests, so
drift of the machine hits both; both modes' answers are checked equal. Writes
``bench/results/ad_round_trip.json``: p50/p99 per mode and concurrency, the ratio, the machine
and versions, and the faster mode (the feed's default).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from genrec.artifacts import latest_run, machine, now_iso, runs, versions, write_json
from genrec.client.recommend_client import encode_request
from genrec.contracts import AD_CTR, FEED_CANDIDATES, RECOMMEND
from genrec.ensemble.request_types import RecommendRequest

MODES = ("ensemble", "two_calls")
CONCURRENCY = (1, 4)


@dataclass(frozen=True)
class FeedCall:
    """One feed request: a ``recommend`` request and the (ads, F) rows of its eligible ads."""

    req: RecommendRequest
    ad_features: np.ndarray  # (ads, F) float32
    user_id: str | None = None
    options: tuple[tuple[str, Any], ...] = ()  # encode_request keywords: top_k, beam_width, excluded, ...


def _grpc_inputs(tensors: list[tuple[str, np.ndarray, str]]) -> list:
    import tritonclient.grpc as grpc

    out = []
    for name, arr, dt in tensors:
        t = grpc.InferInput(name, list(arr.shape), dt)
        t.set_data_from_numpy(arr)
        out.append(t)
    return out


def recommend_tensors(call: FeedCall) -> tuple[list[tuple[str, np.ndarray, str]], dict[str, Any]]:
    h, r = call.req.history, call.req
    return encode_request(
        h.item,
        h.action,
        h.timestamp,
        h.device,
        user_id=call.user_id,
        segment=r.segment,
        ctx_device=r.ctx_device,
        request_time=r.ctx_time,
        **dict(call.options),
    )


def via_ensemble(client, call: FeedCall) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One round trip: ``feed_candidates`` -> (items, scores, pctr (ads,))."""
    import tritonclient.grpc as grpc

    tensors, params = recommend_tensors(call)
    tensors.append(("ad_features", np.ascontiguousarray(call.ad_features[None], np.float32), "FP32"))
    outs = [grpc.InferRequestedOutput(n) for n in ("items", "scores", "pctr")]
    r = client.infer(FEED_CANDIDATES, _grpc_inputs(tensors), outputs=outs, parameters=params or None)
    return r.as_numpy("items"), r.as_numpy("scores"), r.as_numpy("pctr")[0]


def via_two_calls(client, call: FeedCall) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``recommend`` (with ``user_vector``), then ``ad_ctr`` on it -> (items, scores, pctr (ads,))."""
    import tritonclient.grpc as grpc

    tensors, params = recommend_tensors(call)
    outs = [grpc.InferRequestedOutput(n) for n in ("items", "scores", "user_vector")]
    r = client.infer(RECOMMEND, _grpc_inputs(tensors), outputs=outs, parameters=params or None)
    user = r.as_numpy("user_vector")  # (1, d): a batch of one for ad_ctr
    ads = np.ascontiguousarray(call.ad_features[None], np.float32)
    p = client.infer(AD_CTR, _grpc_inputs([("user_vector", user, "FP32"), ("ad_features", ads, "FP32")]))
    return r.as_numpy("items"), r.as_numpy("scores"), p.as_numpy("pctr")[0]


CALLS = {"ensemble": via_ensemble, "two_calls": via_two_calls}


def feed_calls(run: Path, n_users: int, n_ads: int, seed: int = 0) -> list[FeedCall]:
    """Held-out users of ``run`` with ``n_ads`` random eligible ads each (rows as the feed builds them)."""
    from genrec.ad_ctr import ad_feature_rows, load
    from genrec.bundle import load_bundle
    from genrec.data.split import leave_last_out
    from genrec.evaluate import dataset_of
    from genrec.heldout import heldout_requests

    b = load_bundle(run)
    table = load(run).table
    ds = dataset_of(b)
    split = leave_last_out(ds.events)
    reqs, _ = heldout_requests(ds, split, split.eligible_users[:n_users], b.cfg.pipeline)
    ads = np.flatnonzero(~np.isnan(table.quality_proxy))
    rng = np.random.default_rng(seed)
    return [
        FeedCall(r, ad_feature_rows(r.history.item, rng.choice(ads, min(n_ads, ads.size), replace=False), table), f"bench-{i}")
        for i, r in enumerate(reqs)
    ]


def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "requests": len(ms)}


def timed(grpc_url: str, mode: str, calls: list[FeedCall], concurrency: int) -> tuple[list[float], float]:
    """Every call once, spread over ``concurrency`` threads (a client each); (latencies ms, wall s)."""
    import tritonclient.grpc as grpc

    fn = CALLS[mode]
    lat: list[float] = []
    lock = threading.Lock()
    nxt = iter(range(len(calls)))

    def worker() -> None:
        client = grpc.InferenceServerClient(grpc_url)
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            t = time.perf_counter()
            fn(client, calls[i])
            ms = (time.perf_counter() - t) * 1e3
            with lock:
                lat.append(ms)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return lat, time.perf_counter() - t0


def check_same(grpc_url: str, calls: list[FeedCall]) -> float:
    """Max |pctr difference| between the modes; items must be equal and scores within 1e-5."""
    import tritonclient.grpc as grpc

    client = grpc.InferenceServerClient(grpc_url)
    worst = 0.0
    for c in calls:
        (ei, es, ep), (ti, ts, tp) = via_ensemble(client, c), via_two_calls(client, c)
        if not np.array_equal(ei, ti) or not np.allclose(es, ts, atol=1e-5):
            raise AssertionError(f"{c.user_id}: the ensemble and the two calls disagree on items or scores")
        worst = max(worst, float(np.abs(ep - tp).max()) if ep.size else 0.0)
    return worst


def default_run() -> Path:
    for name in ("small", "tiny"):
        if runs(name=name):
            return latest_run(name=name)
    raise SystemExit("no small or tiny run under artifacts/runs: genrec-train --config tiny (or pass --run)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.ad_round_trip", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--run", type=Path, default=None, help="trained run with a pCTR model (default: latest small, else tiny)")
    p.add_argument("--repository", type=Path, default=None, help="serve this published repository instead of publishing --run")
    p.add_argument("--users", type=int, default=50, help="held-out users, one feed request each per round (default 50)")
    p.add_argument("--ads", type=int, default=32, help="eligible ads per request (default 32)")
    p.add_argument(
        "--rounds",
        type=int,
        default=12,
        help="alternating rounds per mode and concurrency: short rounds spread a busy machine over both (default 12)",
    )
    p.add_argument("--out", type=Path, default=Path("bench/results/ad_round_trip.json"))
    a = p.parse_args(argv)

    from genrec.bundle import load_bundle
    from genrec.exporters.publish import publish_run
    from genrec.runtime.triton_server import TritonServer

    run = (a.run or default_run()).resolve()
    cfg = load_bundle(run).cfg
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="ad_round_trip-") as tmp:
        repo = a.repository
        if repo is None:
            repo = Path(tmp) / "model_repository"
            print(f"[bench] publishing {run} into {repo}", flush=True)
            publish_run(run, repo, progress=lambda m: print(m, flush=True))
        calls = feed_calls(run, a.users, a.ads)
        server = TritonServer.on_free_ports(repo, log=Path(tmp) / "triton.log", env={"GENREC_SERVING__STATE_DIR": str(Path(tmp) / "state")})
        print("[bench] starting Triton", flush=True)
        with server:
            for mode in MODES:  # warm-up: every user's encoder state cached, every path loaded
                timed(server.grpc_url, mode, calls, 1)
            max_pctr_diff = check_same(server.grpc_url, calls[:20])
            results: dict[str, dict] = {}
            for c in CONCURRENCY:
                lat: dict[str, list[float]] = {m: [] for m in MODES}
                wall: dict[str, float] = dict.fromkeys(MODES, 0.0)
                round_ratio = []  # two calls / ensemble p50 of each round: the spread is this machine's noise
                for r in range(a.rounds):
                    p50 = {}
                    for mode in MODES if r % 2 == 0 else MODES[::-1]:
                        ms, s = timed(server.grpc_url, mode, calls, c)
                        lat[mode] += ms
                        wall[mode] += s
                        p50[mode] = float(np.percentile(ms, 50))
                    round_ratio.append(p50["two_calls"] / p50["ensemble"])
                row: dict[str, Any] = {m: {**percentiles(lat[m]), "throughput_rps": len(lat[m]) / wall[m]} for m in MODES}
                row["two_calls_over_ensemble"] = {k: row["two_calls"][k] / row["ensemble"][k] for k in ("p50_ms", "p99_ms", "mean_ms")}
                q = np.percentile(round_ratio, [0, 25, 50, 75, 100])
                row["two_calls_over_ensemble_p50_per_round"] = dict(zip(("min", "q25", "median", "q75", "max"), map(float, q)))
                results[f"concurrency_{c}"] = row
                e, t = row["ensemble"], row["two_calls"]
                print(
                    f"[bench] c={c}: ensemble p50 {e['p50_ms']:.2f} p99 {e['p99_ms']:.2f} ms | two calls p50 {t['p50_ms']:.2f} "
                    f"p99 {t['p99_ms']:.2f} ms | ratio p50 {row['two_calls_over_ensemble']['p50_ms']:.3f}",
                    flush=True,
                )
    faster = {c: min(MODES, key=lambda m: results[c][m]["p50_ms"]) for c in results}
    out = {
        "what": "feed's organic items + ads' pCTR from Triton: one feed_candidates ensemble call vs recommend then ad_ctr (two gRPC calls)",
        "run": str(run),
        "config": cfg.name,
        "users": len(calls),
        "ads_per_request": int(calls[0].ad_features.shape[0]),
        "rounds": a.rounds,
        "workload": "returning users (encoder cache warm), default request options, gRPC, one Triton (pip runtime), client on the same machine",
        "answers_equal": {"items_and_scores": True, "max_abs_pctr_diff": max_pctr_diff},
        "results": results,
        "faster_p50": faster,
        # the faster overall (p50 summed over the concurrencies): the feed's default
        "feed_default": min(MODES, key=lambda m: sum(results[c][m]["p50_ms"] for c in results)),
        # other work on the machine moves the tails: the 1-minute load average around the run
        "load_average_1m": {"before": load_before[0], "after": os.getloadavg()[0]},
        "machine": machine(),
        "versions": versions(),
        "created": now_iso(),
    }
    write_json(a.out, out)
    print(f"[bench] wrote {a.out}; faster by p50: {faster}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
