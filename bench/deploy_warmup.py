"""Feed latency around a deploy: p50/p99 of ``POST /v1/feed`` in the minute before and the minute
after a new ``recommend`` version is published, without and with the deploy warm-up
(``feed/warmup.py``), back to back on one stack.

    python -m bench.deploy_warmup                       # tiny, ~9 min: writes bench/results/deploy_warmup.json and .png
    python -m bench.deploy_warmup --window-s 20 --users 60 --out build/dw.json   # quicker

Workload: the run's users with real histories (seeded into Redis as ``u<i>``); the first
``--long-users`` of them get long histories (``--long-events``, e.g. 1000-3000 events: their own
events after real event sequences of other users of the data set, earlier in time), so a cold
encode costs what it costs for a heavy user. Open-loop load at ``--rate`` feeds a second, the
users in a fixed shuffled cycle (each user comes back every users / rate seconds, well within
the minute), ``count`` 10, a fresh session each request.

Each phase: one unmeasured pass over every user (the serving version's encoder cache holds
every state: the steady state), then the steady load for ``--window-s`` seconds, then
``genrec-publish`` of the same run into the running Triton (a new version of every model:
encoder states built by the old version's stub are not in the new one's cache) while the load
goes on, then ``--window-s`` seconds more. "before" is the window before the publish started,
"after" the window after the new version was ready (publish returned). Phase ``no_warmup``:
``GENREC_FEED__WARM_USERS=0``, so the feed moves everyone to the new version at its next read of
the ready versions. Phase ``warmup``: the feed holds the new version until the recently active
users are warmed on it (the feed is restarted between the phases with that setting; Triton and
Redis stay up). The active-index cost per request is measured separately: the feed's state read
with and without noting the visit (the index is written by a background flush each second),
alternated, against the same Redis.

``--state-store redis --publish-run OTHER --out bench/results/deploy_warmup_redis_state.json``:
Triton keeps encoder states in the stack's Redis (keyed by the encoder graph's digest, so they
survive a reload); the first phase publishes OTHER (another run of the same data: new weights),
the second ``--run`` again, its states left from the first phase deleted first (new weights
start cold).

Writes bench/results/deploy_warmup.json and deploy_warmup.png (latency against time, publish
marked).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from genrec.artifacts import latest_run, machine, now_iso, versions, write_json
from genrec.runtime.stack import BIN, Stack, State, _stop_group
from genrec.runtime.triton_server import metrics_settle_s, scrape_metrics

WARM_METRICS = ("feed_warmup_users_total", "feed_warmup_runs_total", "feed_warmup_duration_seconds_sum")


def say(msg: str) -> None:
    print(f"[deploy-warmup] {msg}", flush=True)


def pct(a: list[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(a), q)) if a else None


# ---- workload -----------------------------------------------------------------------------------


def lengthen_histories(run: Path, redis_url: str, users: int, lo: int, hi: int, seed: int = 0) -> dict[str, Any]:
    """Give users u0..u<users-1> ``lo..hi`` events: real event sequences of other users of the
    run's data set (in their order), placed before the user's own events, then the user's own."""
    from genrec.bundle import load_bundle
    from genrec.evaluate import dataset_of
    from genrec.feed.event_store import EventStore
    from genrec.feed.history import pack

    bundle = load_bundle(run)
    ds = dataset_of(bundle)
    ev, cap = ds.events, bundle.cfg.pipeline.max_history_events
    off = ev.user_offsets()
    rng = np.random.default_rng(seed)
    lengths = rng.integers(lo, min(hi, cap) + 1, size=users)
    tag = f"{bundle.manifest['data_hash']}-long{lo}-{hi}-s{seed}"

    async def write() -> None:
        store = EventStore(redis_url, 5.0, cap, 1000, 1000, 3600)
        for u in range(users):
            own = np.arange(int(off[u]), int(off[u + 1]))
            idx: list[np.ndarray] = []
            while sum(len(i) for i in idx) + len(own) < lengths[u]:
                other = int(rng.integers(ev.n_users))
                idx.append(np.arange(int(off[other]), int(off[other + 1])))
            rows = np.concatenate([*idx, own])[-int(lengths[u]) :]
            t_end = float(ev.timestamp[own[0]]) if len(own) else float(ev.timestamp.max())
            times = t_end - 60.0 * (len(rows) - np.arange(len(rows)))  # one a minute, ending before the user's own
            times[-len(own) :] = ev.timestamp[own]
            records = pack(ev.item[rows], times, ev.action[rows], ev.device[rows])
            await store.seed_user(f"u{u}", records, int(ds.users.segment[u]), tag)
        await store.close()

    asyncio.run(write())
    return {"users": users, "events_min": int(lengths.min()), "events_max": int(lengths.max()), "events_mean": float(lengths.mean())}


class Load:
    """Open-loop feed requests at ``rate`` a second over ``users`` (a fixed cycle), each on one of
    ``workers`` keep-alive connections; every request's start, latency and served version kept."""

    def __init__(self, base: str, users: list[str], rate: float, workers: int = 8) -> None:
        self.base, self.users, self.rate, self.workers = base, users, rate, workers
        self.records: list[tuple[float, float, str, bool, int]] = []  # (start, ms, version, fallback, status)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._slots: queue.Queue[float] = queue.Queue()  # due times (unix s), one per request
        self._next = 0
        self._threads: list[threading.Thread] = []

    def _worker(self) -> None:
        host, port = self.base.split("//")[1].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        while True:
            due = self._slots.get()
            if self._stop.is_set():
                return
            with self._lock:
                user = self.users[self._next % len(self.users)]
                self._next += 1
            body = json.dumps({"user_id": user, "count": 10})
            # latency counts from when the request was due, not from when a worker was free to send
            # it: while every worker waits on slow answers, the queueing is the caller's wait too
            t0 = due
            try:
                conn.request("POST", "/v1/feed", body, {"Content-Type": "application/json"})
                r = conn.getresponse()
                raw = r.read()
                ms = (time.time() - t0) * 1e3
                data = json.loads(raw).get("data", {}) if r.status == 200 else {}
                rec = (t0, ms, str(data.get("model_version", "")), bool(data.get("fallback")), r.status)
            except Exception:  # noqa: BLE001 - an error is a data point, not the end of the run
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                rec = (t0, (time.time() - t0) * 1e3, "", True, 0)
            with self._lock:
                self.records.append(rec)

    def _pace(self) -> None:
        t0 = time.monotonic()
        i = 0
        while not self._stop.is_set():
            delay = t0 + i / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._slots.put(time.time())
            i += 1

    def __enter__(self) -> Load:
        self._threads = [threading.Thread(target=self._worker, daemon=True) for _ in range(self.workers)]
        self._threads.append(threading.Thread(target=self._pace, daemon=True))
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for _ in range(self.workers):
            self._slots.put(time.time())
        for t in self._threads:
            t.join(timeout=35)


def visit_all(base: str, users: list[str]) -> None:
    host, port = base.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    for u in users:
        conn.request("POST", "/v1/feed", json.dumps({"user_id": u, "count": 10}), {"Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            raise RuntimeError(f"/v1/feed for {u}: HTTP {r.status}")
    conn.close()


def scrape(url: str, names: tuple[str, ...]) -> dict[str, float]:
    text = scrape_metrics(url, metrics_settle_s(), timeout_s=10)  # Triton's custom metrics lag by a flush
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(names):
            key, _, value = line.rpartition(" ")
            out[key] = out.get(key, 0.0) + float(value)
    return out


def cache_counts(metrics_url: str, version: str) -> dict[str, float]:
    m = scrape(metrics_url, ("genrec_encoder_cache_hits_total", "genrec_encoder_cache_misses_total"))
    out = {"hits": 0.0, "misses": 0.0}
    for k, v in m.items():
        if f'model_version="{version}"' in k:
            out["hits" if "hits" in k else "misses"] += v
    return out


def window(records: list[tuple[float, float, str, bool, int]], a: float, b: float) -> dict[str, Any]:
    inside = [r for r in records if a <= r[0] < b]
    ok = [r[1] for r in inside if r[4] == 200]
    by_version: dict[str, int] = {}
    for r in inside:
        by_version[r[2] or "error"] = by_version.get(r[2] or "error", 0) + 1
    return {
        "seconds": round(b - a, 1),
        "requests": len(inside),
        "p50_ms": pct(ok, 50),
        "p99_ms": pct(ok, 99),
        "max_ms": max(ok) if ok else None,
        "mean_ms": float(np.mean(ok)) if ok else None,
        "errors": sum(r[4] != 200 for r in inside),
        "fallbacks": sum(r[3] for r in inside),
        "by_version": by_version,
    }


# ---- phases --------------------------------------------------------------------------------------


def restart_feed(stack: Stack, st: State, run: Path, env: dict[str, str]) -> State:
    """Only the feed service, with ``env`` added (not ``stack.up``: it would publish and seed again)."""
    pid = stack.pid("feed")
    if pid is not None:
        _stop_group(pid, 30)
        stack.pid_file("feed").unlink(missing_ok=True)
    os.environ.update(env)
    stack._ensure("feed", st, lambda: stack._start_feed(st, run), [])
    stack._wait("feed", st, 120)
    return st


def publish(run: Path, st: State) -> tuple[float, float, str]:
    cmd = [str(BIN / "genrec-publish"), "--run", str(run), "--repository", st.repository, "--triton-url", st.triton_http, "--no-summary"]
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    t1 = time.time()
    if out.returncode != 0:
        raise RuntimeError(f"genrec-publish failed: {out.stderr[-2000:]}")
    m = re.search(r"\| recommend \| (\d+) \|", out.stdout)
    return t0, t1, m[1] if m else "?"


STATE_PREFIX = "genrec:encoder-state:"  # ensemble/state_store.py: <prefix><encoder digest>:<user>


def state_tags(url: str | None) -> dict[str, int]:
    """Encoder digests with states in Triton's Redis state store, and how many users each."""
    if url is None:
        return {}
    import redis

    r = redis.Redis.from_url(url)
    tags: dict[str, int] = {}
    for key in r.scan_iter(match=STATE_PREFIX + "*", count=1000):
        tag = key.decode()[len(STATE_PREFIX) :].split(":", 1)[0]
        tags[tag] = tags.get(tag, 0) + 1
    return tags


def forget_states(url: str | None, tags: set[str]) -> None:
    """Delete the states of these digests (a version published again must start cold, as new weights would)."""
    if url is None or not tags:
        return
    import redis

    r = redis.Redis.from_url(url)
    for tag in tags:
        for key in r.scan_iter(match=f"{STATE_PREFIX}{tag}:*", count=1000):
            r.delete(key)


def phase(
    name: str, st: State, run: Path, users: list[str], rate: float, window_s: float, state_url: str | None, forget: set[str]
) -> dict[str, Any]:
    feed_metrics = f"{st.feed_url}/metrics"
    say(f"[{name}] one pass over {len(users)} users (the serving version's encoder cache holds them)")
    visit_all(st.feed_url, users)
    load_before = os.getloadavg()[0]
    with Load(st.feed_url, users, rate) as load:
        say(f"[{name}] steady load at {rate}/s for {window_s:.0f} s, then publish")
        time.sleep(window_s)
        tags_before = state_tags(state_url)
        forget_states(state_url, forget)
        t_pub0, t_pub1, new = publish(run, st)
        say(f"[{name}] published recommend version {new} in {t_pub1 - t_pub0:.1f} s; {window_s:.0f} s more under load")
        cache0 = cache_counts(st.triton_metrics, new)
        time.sleep(window_s)
        records = list(load.records)
    cache1 = cache_counts(st.triton_metrics, new)
    warm = scrape(feed_metrics, WARM_METRICS)
    before = window(records, t_pub0 - window_s, t_pub0)
    after = window(records, t_pub1, t_pub1 + window_s)
    during = window(records, t_pub0, t_pub1)
    # when traffic reached the new version (after its warm-up, with the warm-up on): "after" must
    # cover it, or the figure would only have measured the old version
    first_new = min((r[0] for r in records if r[0] >= t_pub1 and r[2] == str(new)), default=None)
    say(
        f"[{name}] before: p50 {before['p50_ms']:.1f} ms p99 {before['p99_ms']:.1f} ms | "
        f"after: p50 {after['p50_ms']:.1f} ms p99 {after['p99_ms']:.1f} ms (max {after['max_ms']:.0f} ms) | "
        f"new version's cache after the publish: {cache1}"
    )
    return {
        "new_recommend_version": new,
        "publish_seconds": round(t_pub1 - t_pub0, 1),
        "first_served_by_new_version_s": None if first_new is None else round(first_new - t_pub1, 2),
        "after_window_covers_new_version": first_new is not None and first_new < t_pub1 + window_s,
        "before": before,
        "during_publish": during,
        "after": after,
        "new_version_encoder_cache_at_ready": cache0,
        "new_version_encoder_cache_at_end": cache1,
        "feed_warmup_metrics": warm,
        "redis_state_users_by_digest": {"before_publish": tags_before, "forgotten": sorted(forget), "end": state_tags(state_url)},
        "load_average_1m": {"start": load_before, "end": os.getloadavg()[0]},
        "timeline": [[round(r[0] - t_pub1, 3), round(r[1], 2), r[2], r[4]] for r in records],  # seconds from ready, ms, version, status
        "publish_started_s": round(t_pub0 - t_pub1, 2),
    }


def active_index_cost(redis_url: str, users: list[str], n_items: int, n_devices: int, rounds: int = 2000) -> dict[str, Any]:
    """Median time of the feed's state read with and without the active-index write (alternated)."""
    from genrec.feed.event_store import ACTIVE_SHARDS, EventStore, active_key

    async def go() -> dict[str, Any]:
        store = EventStore(redis_url, 1.0, 4096, 1000, 1000, 3600, active_users_cap=20_000)
        on: list[float] = []
        off: list[float] = []
        for i in range(rounds):
            u = users[i % len(users)]
            for mark, out in ((True, on), (False, off)) if i % 2 else ((False, off), (True, on)):
                t0 = time.perf_counter()
                await store.user_state(u, n_items, n_devices, 100, mark_active=mark)
                out.append((time.perf_counter() - t0) * 1e6)
        t0 = time.perf_counter()
        await store.flush_active()
        last_flush_ms = (time.perf_counter() - t0) * 1e3
        mem = 0
        for k in range(ACTIVE_SHARDS):
            mem += int(await store.redis.memory_usage(active_key(k)) or 0)
        await store.close()
        return {
            "rounds": rounds,
            "state_read_p50_us": float(np.median(off)),
            "state_read_with_index_p50_us": float(np.median(on)),
            "added_p50_us": float(np.median(on) - np.median(off)),
            "added_mean_us": float(np.mean(on) - np.mean(off)),
            "last_flush_ms": last_flush_ms,  # one background pipeline, off the request path
            "index_bytes": mem,
            "index_users": len(users),
        }

    return asyncio.run(go())


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = result["phases"]
    fig, axes = plt.subplots(len(phases), 1, figsize=(11, 3.6 * len(phases)), sharex=True, sharey=True)
    for ax, (name, ph) in zip(np.atleast_1d(axes), phases.items()):
        tl = np.array([(t, ms) for t, ms, _, status in ph["timeline"] if status == 200])
        ax.scatter(tl[:, 0], tl[:, 1], s=4, alpha=0.5, label="/v1/feed latency")
        edges = np.arange(tl[:, 0].min(), tl[:, 0].max() + 5, 5.0)
        mids, p99 = [], []
        for a, b in zip(edges, edges[1:]):
            sel = tl[(tl[:, 0] >= a) & (tl[:, 0] < b), 1]
            if sel.size:
                mids.append((a + b) / 2)
                p99.append(np.percentile(sel, 99))
        ax.plot(mids, p99, color="C3", label="p99 per 5 s")
        ax.axvspan(ph["publish_started_s"], 0, color="0.85", alpha=0.5, zorder=0, label="publish (export + load)")
        ax.axvline(0, color="k", lw=1, label="new version ready")
        ax.set_yscale("log")
        ax.set_ylabel("ms")
        b, a = ph["before"], ph["after"]
        ax.set_title(f"{name}: p99 {b['p99_ms']:.0f} ms in the minute before, {a['p99_ms']:.0f} ms in the minute after")
        ax.legend(loc="upper left", fontsize=8)
    np.atleast_1d(axes)[-1].set_xlabel("seconds from the new version being ready")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.deploy_warmup", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default="tiny", help="config of the stack (default tiny)")
    p.add_argument("--run", type=Path, default=None, help="run to serve and publish again (default: the config's latest)")
    p.add_argument("--users", type=int, default=200, help="users u0..u<N-1> in the load (default 200)")
    p.add_argument("--long-users", type=int, default=40, help="of them, users given long histories (default 40)")
    p.add_argument("--long-events", default="1000,3000", help="long history lengths, min,max (default 1000,3000)")
    p.add_argument("--rate", type=float, default=5.0, help="feed requests a second (default 5)")
    p.add_argument("--window-s", type=float, default=60.0, help="seconds measured before and after the publish (default 60)")
    p.add_argument("--warm-rate", type=float, default=10.0, help="GENREC_FEED__WARM_RATE_PER_S of the warm-up phase (default 10)")
    p.add_argument(
        "--publish-run",
        type=Path,
        default=None,
        help="run published in the first phase, --run again in the second (default: --run; another run of the same data = new weights)",
    )
    p.add_argument(
        "--state-store",
        choices=["memory", "redis"],
        default="memory",
        help="GENREC_SERVING__STATE_STORE of Triton: memory (default; an LRU per model instance) or redis (the stack's Redis, db 1)",
    )
    p.add_argument("--out", type=Path, default=Path("bench/results/deploy_warmup.json"))
    a = p.parse_args(argv)
    lo, hi = (int(x) for x in a.long_events.split(","))
    run = (a.run or latest_run(name=a.config)).resolve()
    new_run = (a.publish_run or run).resolve()
    ports: dict[str, int | None] = {}
    if a.state_store == "redis":  # Triton starts before Redis: the port is chosen here, for both
        from genrec.runtime.ports import free_port

        ports["redis"] = free_port()
        os.environ.update({"GENREC_SERVING__STATE_STORE": "redis", "GENREC_SERVING__REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/1"})
    users = [f"u{i}" for i in range(a.users)]
    order = list(np.random.default_rng(1).permutation(users))
    common = {"GENREC_FEED__ACTIVE_USERS_CAP": "20000", "GENREC_FEED__WARM_BUDGET_S": "120"}
    t_start = time.time()
    load_at_start = os.getloadavg()
    tmp = tempfile.TemporaryDirectory(prefix="genrec-bench-deploy-")
    stack = Stack(Path(tmp.name))
    result: dict[str, Any] = {}
    try:
        say(f"starting a stack of its own on free ports ({run}), state in {tmp.name}")
        os.environ.update({**common, "GENREC_FEED__WARM_USERS": "0"})
        st = stack.up(a.config, run, None, ports, True, None, 600)
        say(f"feed {st.feed_url}, Triton gRPC {st.triton_grpc}")
        long = lengthen_histories(run, st.redis_url, min(a.long_users, a.users), lo, hi)
        say(f"long histories: {long}")
        from genrec.bundle import load_bundle

        bundle = load_bundle(run)
        cost = active_index_cost(st.redis_url, users, int(bundle.manifest["n_items"]), int(bundle.manifest["n_devices"]))
        say(f"active-index cost per state read: {cost['added_p50_us']:.0f} us at the median (index {cost['index_bytes']} bytes)")
        state_url = f"redis://127.0.0.1:{ports['redis']}/1" if a.state_store == "redis" else None
        phases = {"no_warmup": phase("no_warmup", st, new_run, order, a.rate, a.window_s, state_url, set())}
        say("restarting the feed with the warm-up on")
        warm_env = {"GENREC_FEED__WARM_USERS": str(a.users), "GENREC_FEED__WARM_RATE_PER_S": str(a.warm_rate)}
        st = restart_feed(stack, st, run, warm_env)
        # the second publish is of --run again (serving: --publish-run's weights): its states,
        # left in Redis by the first phase, are deleted so that it starts cold like new weights
        forget = set(phases["no_warmup"]["redis_state_users_by_digest"]["before_publish"]) if new_run != run else set()
        phases["warmup"] = phase("warmup", st, run, order, a.rate, a.window_s, state_url, forget)
        result = {
            "config": a.config,
            "run": run.name,
            "published_runs": [new_run.name, run.name],  # by phase
            "state_store": a.state_store,
            "users": a.users,
            "long_histories": long,
            "rate_per_s": a.rate,
            "window_s": a.window_s,
            "warmup_settings": {**common, **warm_env, "GENREC_FEED__WARM_CONCURRENCY": "1 (default)"},
            "versions_refresh_s": "default (FeedConfig.versions_refresh_s)",
            "phases": phases,
            "active_index_cost": cost,
            "method": __doc__.split("Writes")[0].strip(),
            "load_average_at_start": list(load_at_start),
            "load_average_at_end": list(os.getloadavg()),
            "wall_s": round(time.time() - t_start, 1),
            "machine": machine(),
            "versions": versions(),
            "created": now_iso(),
        }
    finally:
        stack.down()
        logs = Path("build/deploy_warmup_logs")  # the stack's logs outlive its temporary folder
        logs.mkdir(parents=True, exist_ok=True)
        for name in ("triton", "redis", "feed"):
            if stack.log_file(name).exists():
                shutil.copy2(stack.log_file(name), logs / f"{name}.log")
        tmp.cleanup()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out, result)
    png = a.out.with_suffix(".png")
    plot(result, png)
    nw, w = result["phases"]["no_warmup"], result["phases"]["warmup"]
    say(
        f"p99 before -> after the publish: no warm-up {nw['before']['p99_ms']:.0f} -> {nw['after']['p99_ms']:.0f} ms, "
        f"warm-up {w['before']['p99_ms']:.0f} -> {w['after']['p99_ms']:.0f} ms; wrote {a.out} and {png}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
