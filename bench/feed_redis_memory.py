"""Redis memory per feed user, measured with ``MEMORY USAGE`` on a real redis-server.

    python -m bench.feed_redis_memory                 # latest `small` run, every user seeded
    python -m bench.feed_redis_memory --run artifacts/runs/tiny-001 --users 200

Seeds the run's users with ``genrec-feed-seed`` (the histories as the stack holds them), then
measures each key family of the schema in feed/README.md: the seeded histories as they are
(p50 / mean / max user), and each capped key at its cap (history 4096 events, likes/negatives
1000 items, impressions 1000 records), a served page of 10 items and an idempotency record,
written in the encodings the service uses. Writes ``bench/results/feed_redis_memory.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import numpy as np
import redis

from genrec.artifacts import latest_run, machine, now_iso, versions, write_json
from genrec.feed.event_store import user_key
from genrec.feed.history import pack
from genrec.feed.seed import seed, user_id_of
from genrec.runtime.redis_server import RedisServer
from genrec.settings import FeedConfig, PipelineConfig

OUT = Path("bench/results/feed_redis_memory.json")


def _usage(r: redis.Redis, key: str) -> int:
    return int(r.memory_usage(key, samples=0) or 0)


def _capped_keys(r: redis.Redis, feed: FeedConfig, history_cap: int) -> dict[str, int]:
    """Each capped key family at its cap, in the service's encodings, for one user."""
    rng = np.random.default_rng(0)
    user, now = "cap-user", 1.767e9
    n = history_cap
    records = pack(rng.integers(0, 20_000, n), now - np.arange(n)[::-1], rng.integers(0, 4, n), rng.integers(0, 3, n))
    r.rpush(user_key(user, "h"), *records)
    r.hset(user_key(user, "p"), mapping={"seg": 3, "seed": "0" * 64})
    for family in ("likes", "neg"):
        r.zadd(user_key(user, family), {str(int(i)): now - k for k, i in enumerate(rng.choice(20_000, feed.max_relations, replace=False))})
    imp = pack(
        rng.integers(0, 20_000, feed.max_impressions),
        np.full(feed.max_impressions, now),
        np.zeros(feed.max_impressions, int),
        np.zeros(feed.max_impressions, int),
    )
    r.rpush(user_key(user, "imp"), *imp)
    item = {
        "type": "content",
        "id": 12345,
        "score": 0.123456,
        "position": 17,
        "reason": "Because you engaged with category 12",
        "display": {
            "title": "Content #12345: category 12, by author 777",
            "category": 12,
            "author": 777,
            "kind": "content",
            "popularity": 3.2,
        },
        "tracking": {"event_token": "x" * 120, "trace_id": "0" * 32},
    }
    page = {
        "items": [item] * 10,
        "next_cursor": "c" * 700,
        "session_id": "s" * 16,
        "page": 2,
        "fallback": False,
        "cold_start": False,
        "degraded": [],
    }
    r.set(user_key(user, "pg:ssssssssssssssss:2"), json.dumps(page, separators=(",", ":")), ex=feed.cursor_ttl_s)
    answer = {"accepted": 3, "history_appended": 2, "impressions": 1, "likes": 0, "negatives": 0}
    r.hset(user_key(user, "idem:7f1c-0001"), mapping={"h": "0" * 64, "a": json.dumps(answer)})
    return {
        "history_at_cap": _usage(r, user_key(user, "h")),
        "profile": _usage(r, user_key(user, "p")),
        "likes_at_cap": _usage(r, user_key(user, "likes")),
        "negatives_at_cap": _usage(r, user_key(user, "neg")),
        "impressions_at_cap": _usage(r, user_key(user, "imp")),
        "served_page_10_items": _usage(r, user_key(user, "pg:ssssssssssssssss:2")),
        "idempotency_record": _usage(r, user_key(user, "idem:7f1c-0001")),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.feed_redis_memory", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--run", type=Path, default=None, help="run folder (default: the latest `small` run)")
    p.add_argument("--users", type=int, default=None, help="seed only the first N users (default: all)")
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    run = a.run or latest_run(name="small")
    feed, pipeline = FeedConfig(), PipelineConfig()
    server = RedisServer(maxmemory="2gb").start()
    try:
        print(f"[redis-memory] seeding {run} into {server.url}", flush=True)
        asyncio.run(seed(run, server.url, a.users, progress=lambda m: print(f"  {m}", flush=True)))
        r = redis.Redis.from_url(server.url)
        n_users = a.users or int(r.dbsize() // 2)
        hist = np.array([_usage(r, user_key(user_id_of(u), "h")) for u in range(n_users)])
        lengths = np.array([int(r.llen(user_key(user_id_of(u), "h"))) for u in range(n_users)])
        profile = _usage(r, user_key(user_id_of(0), "p"))
        used = int(r.info("memory")["used_memory"])
        caps = _capped_keys(r, feed, pipeline.max_history_events)
    finally:
        server.stop()
    result = {
        "run": str(run),
        "users_seeded": n_users,
        "seeded_history_events": {"p50": float(np.median(lengths)), "mean": float(lengths.mean()), "max": int(lengths.max())},
        "seeded_history_bytes": {"p50": float(np.median(hist)), "mean": float(hist.mean()), "max": int(hist.max())},
        "profile_bytes": profile,
        "seeded_bytes_per_user_mean": float(hist.mean() + profile),
        "redis_used_memory_after_seed_bytes": used,
        "capped_key_bytes": caps,
        "worst_case_bytes_per_user": int(
            caps["history_at_cap"] + caps["profile"] + caps["likes_at_cap"] + caps["negatives_at_cap"] + caps["impressions_at_cap"]
        ),
        "method": "MEMORY USAGE key SAMPLES 0 on a real redis-server, default encodings",
        "created": now_iso(),
        "versions": versions(),
        "machine": machine(),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("versions", "machine")}, indent=2))
    print(f"[redis-memory] wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
