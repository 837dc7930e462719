"""Latency of the feed service's ``POST /v1/feed`` through the whole stack (BentoML -> Triton, Redis).

    python -m bench.feed_latency                          # starts its own stack (latest `small` run, free ports), ~3 min
    python -m bench.feed_latency --stack-dir build/stack  # measure the stack `genrec-stack up` started
    python -m bench.feed_latency --requests 100 --users 50 --out build/feed_latency.json   # quicker

Workload: returning users with real histories (the run's users, seeded into Redis as ``u<i>``),
``count`` 10, a fresh feed session each request (no cursor). Every user is visited once before
the measurement, so Triton's encoder cache holds their states (a returning user's steady state).
Closed-loop clients at concurrency 1, 2 and 4.

Time outside Triton (``overhead_p50_ms``): when the service returns its Triton call time per
request (an ``X-Triton-Ms`` response header), the p50 of (feed latency - that time). The service
does not expose it per request today, so it is the p50 of the feed latency minus the p50 of the
same ``recommend`` calls (the same users' histories, segment, device and top_k) made directly
with ``genrec.client.recommend_client.RecommendClient`` at the same concurrency (the two alternate
in rounds, so other load on the machine falls on both alike), under user ids of
their own so the two do not share encoder-cache entries. As a cross-check, the mean of the feed's
own Triton-call histogram (``feed_triton_request_duration_seconds``, scraped before and after each
level) gives ``overhead_mean_ms`` = mean feed latency - mean Triton call.

Writes bench/results/feed_latency.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from genrec.artifacts import latest_run, machine, now_iso, versions, write_json
from genrec.runtime.stack import Stack, State

GOAL_OVERHEAD_P50_MS = 5.0
LEVELS = (1, 2, 4)
ROUNDS = 4  # feed and direct recommend calls alternate this many times per level
TRITON_HIST = "feed_triton_request_duration_seconds"


def say(msg: str) -> None:
    print(f"[feed-latency] {msg}", flush=True)


class FeedClient:
    """One keep-alive HTTP connection (one per client thread)."""

    def __init__(self, base: str) -> None:
        u = urlparse(base)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)

    def feed(self, user: str, count: int) -> tuple[float, float | None, dict]:
        body = json.dumps({"user_id": user, "count": count, "scene": "home", "device": "mobile"})
        t0 = time.perf_counter()
        self.conn.request("POST", "/v1/feed", body, {"Content-Type": "application/json"})
        r = self.conn.getresponse()
        raw = r.read()
        ms = (time.perf_counter() - t0) * 1e3
        triton = r.getheader("x-triton-ms")
        out = json.loads(raw)
        if r.status != 200 or out.get("code") != 0:
            raise RuntimeError(f"/v1/feed for {user}: HTTP {r.status} {raw[:300]!r}")
        return ms, float(triton) if triton else None, out["data"]


def closed_loop(jobs: list, concurrency: int, make_worker) -> tuple[list, float]:
    """Run ``jobs`` with ``concurrency`` threads, each with its own worker(job) -> result."""
    out: list = [None] * len(jobs)
    nxt = iter(range(len(jobs)))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def loop() -> None:
        work = make_worker()
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            try:
                out[i] = work(jobs[i])
            except BaseException as e:  # noqa: BLE001 - re-raised below
                errors.append(e)
                return

    threads = [threading.Thread(target=loop) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return out, wall


def triton_hist(metrics_url: str) -> tuple[float, float]:
    """(sum seconds, count) of the feed's successful Triton calls."""
    with urllib.request.urlopen(metrics_url, timeout=10) as r:
        text = r.read().decode()
    total = {"sum": 0.0, "count": 0.0}
    for m in re.finditer(rf"^{TRITON_HIST}_(sum|count)\{{([^}}]*)\}} (\S+)$", text, re.M):
        if 'outcome="ok"' in m[2]:
            total[m[1]] += float(m[3])
    return total["sum"], total["count"]


def direct_requests(run: Path, users: int, top_k: int) -> list[dict]:
    """The recommend inputs the feed sends for the first ``users`` seeded users (their seeded
    histories: the run's data set, the newest ``max_history_events`` events)."""
    from genrec.bundle import load_bundle
    from genrec.evaluate import dataset_of

    bundle = load_bundle(run)
    ds = dataset_of(bundle)
    ev, cap = ds.events, bundle.cfg.pipeline.max_history_events
    off = ev.user_offsets()
    reqs = []
    for u in range(users):
        a, b = int(off[u]), int(off[u + 1])
        a = max(a, b - cap)
        reqs.append(
            {
                "items": ev.item[a:b].astype(np.int64),
                "actions": ev.action[a:b].astype(np.int64),
                "timestamps": ev.timestamp[a:b].astype(np.float64),
                "devices": ev.device[a:b].astype(np.int64),
                "segment": int(ds.users.segment[u]),
                "request_time": float(ev.timestamp[b - 1]) + 60.0,
                "user_id": f"bench-direct-{u}",
            }
        )
    return reqs


def pct(a: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(a), q))


def measure(st: State, users: int, requests: int, count: int) -> dict:
    from genrec.client.recommend_client import RecommendClient
    from genrec.settings import named_config

    run = Path(st.run)
    feed_url = st.feed_url
    metrics_url = f"{feed_url}/metrics"
    top_k = named_config(st.config).feed.candidates
    ids = [f"u{u}" for u in range(users)]
    direct = direct_requests(run, users, top_k)

    def feed_worker():
        c = FeedClient(feed_url)
        return lambda user: c.feed(user, count)

    def direct_worker():
        c = RecommendClient(st.triton_grpc)

        def call(r: dict) -> float:
            t0 = time.perf_counter()
            c.recommend(
                r["items"],
                r["actions"],
                r["timestamps"],
                r["devices"],
                user_id=r["user_id"],
                segment=r["segment"],
                ctx_device=0,
                request_time=r["request_time"],
                top_k=top_k,
            )
            return (time.perf_counter() - t0) * 1e3

        return call

    say(f"warm-up: every one of {users} users once through the feed and once directly (fills the encoder cache)")
    warm, _ = closed_loop(ids, 1, feed_worker)
    fallbacks = sum(bool(d["fallback"]) for _, _, d in warm)
    cold = sum(bool(d.get("cold_start")) for _, _, d in warm)
    if fallbacks:
        raise RuntimeError(f"{fallbacks} of {users} warm-up feeds were fallbacks: Triton is not answering; see the stack's logs")
    say(f"  feeds: {len(warm)} (cold-start {cold}), items per feed {np.mean([len(d['items']) for _, _, d in warm]):.1f}")
    closed_loop(direct, 1, direct_worker)

    levels = []
    for c in LEVELS:
        # feed and direct calls alternate in rounds, so load from elsewhere on the machine falls on both alike
        res, dres, wall, dwall = [], [], 0.0, 0.0
        s0, n0 = triton_hist(metrics_url)
        for r in range(ROUNDS):
            idx = range(r, requests, ROUNDS)
            out, w = closed_loop([ids[i % users] for i in idx], c, feed_worker)
            res += out
            wall += w
            dout, dw = closed_loop([direct[i % users] for i in idx], c, direct_worker)
            dres += dout
            dwall += dw
        s1, n1 = triton_hist(metrics_url)
        lat = [ms for ms, _, _ in res]
        header = [ms - t for ms, t, _ in res if t is not None]
        fb = sum(bool(d["fallback"]) for _, _, d in res)
        triton_mean = (s1 - s0) / (n1 - n0) * 1e3 if n1 > n0 else float("nan")
        level = {
            "concurrency": c,
            "requests": len(lat),
            "p50_ms": pct(lat, 50),
            "p99_ms": pct(lat, 99),
            "mean_ms": float(np.mean(lat)),
            "throughput_rps": len(lat) / wall,
            "fallbacks": fb,
            "recommend_direct_p50_ms": pct(dres, 50),
            "recommend_direct_p99_ms": pct(dres, 99),
            "recommend_direct_throughput_rps": len(dres) / dwall,
            "feed_triton_call_mean_ms": triton_mean,
            "overhead_mean_ms": float(np.mean(lat)) - triton_mean,
        }
        if len(header) == len(lat):
            level["overhead_p50_ms"] = pct(header, 50)
            level["overhead_source"] = "per request: feed latency - X-Triton-Ms"
        else:
            level["overhead_p50_ms"] = level["p50_ms"] - level["recommend_direct_p50_ms"]
            level["overhead_source"] = "p50 feed latency - p50 of the same recommend calls made directly (gRPC client)"
        levels.append(level)
        say(
            f"c={c}: feed p50 {level['p50_ms']:.1f} ms  p99 {level['p99_ms']:.1f} ms  {level['throughput_rps']:.1f} req/s | "
            f"recommend direct p50 {level['recommend_direct_p50_ms']:.1f} ms | overhead p50 {level['overhead_p50_ms']:.1f} ms, "
            f"mean {level['overhead_mean_ms']:.1f} ms (feed's Triton call mean {triton_mean:.1f} ms)"
            + (f"  [{fb} fallbacks]" if fb else "")
        )
    return {
        "config": st.config,
        "run": run.name,
        "users": users,
        "count": count,
        "levels": levels,
        "goal_overhead_p50_ms": GOAL_OVERHEAD_P50_MS,
        "goal_met": all(lv["overhead_p50_ms"] <= GOAL_OVERHEAD_P50_MS for lv in levels),
        "method": __doc__.split("Writes")[0].strip(),
        "load_average_1m_at_end": os.getloadavg()[0],  # other work on the machine during the run
        "machine": machine(),
        "versions": versions(),
        "created": now_iso(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.feed_latency", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--stack-dir", type=Path, default=None, help="measure the stack `genrec-stack up` started there (default: start one)")
    p.add_argument("--config", default="small", help="config of the stack this script starts (default small)")
    p.add_argument("--run", type=Path, default=None, help="run of the stack this script starts (default: the config's latest)")
    p.add_argument("--users", type=int, default=200, help="returning users u0..u<N-1> (default 200)")
    p.add_argument("--requests", type=int, default=400, help="requests per concurrency level (default 400)")
    p.add_argument("--count", type=int, default=10, help="items per feed (default 10)")
    p.add_argument("--out", type=Path, default=Path("bench/results/feed_latency.json"))
    a = p.parse_args(argv)

    own: Stack | None = None
    tmp: tempfile.TemporaryDirectory | None = None
    try:
        if a.stack_dir is not None:
            stack = Stack(a.stack_dir)
            st = stack.load()
            if st is None or not stack.status()["up"]:
                say(f"no healthy stack under {a.stack_dir} (genrec-stack up)")
                return 1
        else:
            run = a.run or latest_run(name=a.config)
            tmp = tempfile.TemporaryDirectory(prefix="genrec-bench-stack-")
            own = Stack(Path(tmp.name))
            say(f"starting a stack of its own on free ports ({run}), state in {tmp.name}")
            st = own.up(a.config, run, None, {}, True, None, 600)
        say(f"feed {st.feed_url}, Triton gRPC {st.triton_grpc}, run {st.run}")
        result = measure(st, a.users, a.requests, a.count)
    finally:
        if own is not None:
            own.down()
        if tmp is not None:
            tmp.cleanup()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out, result)
    say(f"wrote {a.out}; goal (overhead p50 <= {GOAL_OVERHEAD_P50_MS} ms at every level) {'met' if result['goal_met'] else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
