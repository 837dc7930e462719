"""``genrec-feed-seed``: write a trained run's users and their histories into Redis, under the
feed's key schema (feed/README.md), so a seeded user id gets a personalised feed.

User ``i`` of the run's data set becomes user id ``u<i>`` (``u0``, ``u1``, ...). Re-running is
idempotent: a user already seeded from the same data set is skipped, keeping the events it
received since; a different data set replaces the seeded history.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from genrec.feed.event_store import EventStore
from genrec.feed.history import pack
from genrec.settings import named_config

USER_PREFIX = "u"


def user_id_of(index: int) -> str:
    return f"{USER_PREFIX}{index}"


async def seed(run: Path, redis_url: str, users: int | None, progress=print) -> dict[str, int]:
    from genrec.bundle import load_bundle
    from genrec.evaluate import dataset_of

    t0 = time.perf_counter()
    bundle = load_bundle(run)
    ds = dataset_of(bundle)
    cap = bundle.cfg.pipeline.max_history_events
    feed = named_config(bundle.cfg.name).feed
    store = EventStore(redis_url, 5.0, cap, feed.max_impressions, feed.max_relations, feed.idempotency_ttl_s)
    await store.ping()
    ev = ds.events
    offsets = ev.user_offsets()
    n = ev.n_users if users is None else min(users, ev.n_users)
    tag = str(bundle.manifest["data_hash"])
    written = skipped = events = 0
    progress(f"seeding {n} users of {run.name} (data {tag}) into {redis_url}")
    for u in range(n):
        a, b = int(offsets[u]), int(offsets[u + 1])
        a = max(a, b - cap)
        records = pack(ev.item[a:b], ev.timestamp[a:b].astype("float64"), ev.action[a:b], ev.device[a:b])
        if await store.seed_user(user_id_of(u), records, int(ds.users.segment[u]), tag):
            written += 1
            events += len(records)
        else:
            skipped += 1
        if (u + 1) % 500 == 0 or u + 1 == n:
            progress(f"  {u + 1}/{n} users ({written} written, {skipped} already seeded)")
    await store.close()
    summary = {"users": n, "written": written, "skipped": skipped, "events": events}
    progress(f"done in {time.perf_counter() - t0:.1f}s: {summary}; user ids are {user_id_of(0)}..{user_id_of(n - 1)}")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="genrec-feed-seed", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, type=Path, help="trained run folder (artifacts/runs/<config>-<NNN>)")
    ap.add_argument("--redis-url", default="redis://localhost:6379/0", help="Redis to write into (default %(default)s)")
    ap.add_argument("--users", type=int, default=None, help="seed only the first N users (default: all)")
    args = ap.parse_args(argv)
    if not (args.run / "manifest.json").exists():
        ap.error(f"{args.run} is not a trained run folder (no manifest.json)")
    asyncio.run(seed(args.run, args.redis_url, args.users))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
