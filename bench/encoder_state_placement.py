"""Where a user's encoder state lives: in each ``recommend`` instance, or in Redis. Measured.

    python -m bench.encoder_state_placement              # ~4 min; starts Triton and redis-server itself

Four servers, one after the other, on copies of the repository that differ only in
``instance_group`` count (1 or 2) and ``GENREC_SERVING__STATE_STORE`` (memory or redis). The
workload is recommend_latency.py's: each user visits cold once, then returns three times with
one new event, at concurrency 4 (so two instances both get work). Per setup: the hit rate of
the returning visits, the encode stage's mean, latency and throughput.
Writes bench/results/encoder_state_placement.json.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.recommend_latency import NEW_EVENTS, Workload, metric_total, percentiles, run_visits, scrape, stage_means, start
from genrec.artifacts import latest_run, machine, now_iso, versions, write_json
from genrec.bundle import load_bundle
from genrec.data.split import leave_last_out
from genrec.evaluate import dataset_of
from genrec.heldout import heldout_requests
from genrec.runtime.redis_server import RedisServer


def repository_with_instances(src: Path, dst: Path, instances: int) -> Path:
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns(".*"))
    cfg = dst / "recommend" / "config.pbtxt"
    cfg.write_text(re.sub(r"instance_group \[ \{ count: \d+", f"instance_group [ {{ count: {instances}", cfg.read_text()))
    return dst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--run", type=Path, default=None)
    p.add_argument("--users", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    a = p.parse_args(argv)
    run = a.run or latest_run(name="small")
    b = load_bundle(run)
    ds = dataset_of(b)
    split = leave_last_out(ds.events)
    reqs, _ = heldout_requests(ds, split, split.eligible_users, b.cfg.pipeline)
    work = Workload([r for r in reqs if len(r.history) > NEW_EVENTS + 1][: a.users])
    n = len(work.reqs)
    tmp = Path(tempfile.mkdtemp(prefix="genrec-placement-"))
    redis = RedisServer(maxmemory="512mb").start()
    rows = []
    try:
        for instances in (1, 2):
            repo = repository_with_instances(a.repository, tmp / f"repo{instances}", instances)
            for store in ("memory", "redis"):
                redis_flush(redis.url)
                state = tmp / f"state-{instances}-{store}"
                state.mkdir()
                srv = start(repo, state, GENREC_SERVING__STATE_STORE=store, GENREC_SERVING__REDIS_URL=redis.url)
                try:
                    run_visits(srv, work, [(u, NEW_EVENTS) for u in range(n)], a.concurrency)  # cold visits
                    before = scrape(srv)
                    lat, wall, hit_rates = [], 0.0, []
                    for cut in range(NEW_EVENTS - 1, 0, -1):
                        m0 = scrape(srv)
                        pass_lat, pass_wall, _ = run_visits(srv, work, [(u, cut) for u in range(n)], a.concurrency)
                        m1 = scrape(srv)
                        hit_rates.append(
                            (metric_total(m1, "genrec_encoder_cache_hits_total") - metric_total(m0, "genrec_encoder_cache_hits_total")) / n
                        )
                        lat += pass_lat
                        wall += pass_wall
                    after = scrape(srv)
                finally:
                    srv.stop()
                row = {
                    "instances": instances,
                    "state_store": store,
                    "concurrency": a.concurrency,
                    "hit_rate_per_returning_visit": hit_rates,
                    "hit_rate": float(np.mean(hit_rates)),
                    **percentiles(lat),
                    "throughput_rps": len(lat) / wall,
                    "stages_ms": stage_means(before, after),
                }
                rows.append(row)
                print(
                    f"[placement] {instances} instance(s), {store:6s}: hit rate {row['hit_rate']:.2f} {[round(h, 2) for h in hit_rates]}, "
                    f"encode {row['stages_ms']['encode']:.2f} ms, p50 {row['p50_ms']:.1f} p99 {row['p99_ms']:.1f} ms, {row['throughput_rps']:.1f} rps",
                    flush=True,
                )
    finally:
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    a.out.mkdir(parents=True, exist_ok=True)
    write_json(
        a.out / "encoder_state_placement.json",
        {
            "machine": machine(),
            "versions": versions(),
            "created": now_iso(),
            "run": str(run),
            "users": n,
            "workload": "per user: 1 cold visit, then 3 returning visits with 1 new event each; closed loop at the given concurrency",
            "rows": rows,
        },
    )
    print(f"[placement] wrote {a.out / 'encoder_state_placement.json'}")
    return 0


def redis_flush(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


if __name__ == "__main__":
    sys.exit(main())
