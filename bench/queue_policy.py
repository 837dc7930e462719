"""What Triton's bounded queue costs ``recommend``: the ~500 ms stall, measured side by side.

    python -m bench.queue_policy                               # latest tiny run, ~2-3 min
    python -m bench.queue_policy --run build/catalogue_scale/runs/tiny-001 --requests 600

The same published run is served three ways, one fresh server each, with the same visits:

- ``queue_policy``: ``dynamic_batching`` with the bounded queue (``default_queue_policy``:
  ``max_queue_size``, a queue timeout, REJECT), what ``genrec-publish`` writes with
  ``GENREC_SERVING__MAX_QUEUE_SIZE`` > 0 (the default until this benchmark);
- ``batcher_no_policy``: ``dynamic_batching {}`` without the policy (not a shipped setting: it
  isolates the policy from the batcher);
- ``no_batcher``: no ``dynamic_batching`` (Triton's default scheduler), what ``genrec-publish``
  writes by default (``serving.max_queue_size`` 0).

Per mode: returning visits at concurrency 1 (closed loop, no client retries, so a stalled
request shows its whole wait): p50/p99/p99.9/max, and the number of requests slower than
``--stall-ms``; then a flood of ``--flood`` concurrent requests: how many are answered, how many
refused, and the slowest. Writes bench/results/queue_policy.json.

Why (read from Triton core's source, 2.51): a queue policy with a timeout, an override or a size
turns off the dynamic batcher's payload prefetching. Without prefetching, a new request wakes the
batcher thread only if a model instance is already waiting for work at that moment. A request
that arrives while the instance is still finishing the previous one (the response has already
reached the client; a closed-loop client sends its next request at once) wakes nobody, and waits
for the batcher's idle timeout, a fixed 500 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bench.catalogue_scale import bench_lock, served, visits_of
from bench.recommend_latency import percentiles
from genrec.artifacts import latest_run, machine, now_iso, versions, write_json

LOCK = "/tmp/genrec-bench.lock"
MODES = ("queue_policy", "batcher_no_policy", "no_batcher")
BATCHING_BLOCK = re.compile(r"^dynamic_batching \{\n.*?^\}\n?", re.S | re.M)
INSTANCE_GROUP = re.compile(r"^instance_group .*\n", re.M)


def say(msg: str) -> None:
    print(f"[queue_policy] {msg}", flush=True)


def bounded_block(queue_size: int, timeout_ms: int) -> str:
    """The ``dynamic_batching`` block ``genrec-publish`` writes with ``serving.max_queue_size`` > 0."""
    from genrec.contracts import recommend_contract
    from genrec.exporters.pbtxt import render
    from genrec.settings import named_config

    env = {"GENREC_SERVING__MAX_QUEUE_SIZE": str(queue_size), "GENREC_SERVING__QUEUE_TIMEOUT_MS": str(timeout_ms)}
    found = BATCHING_BLOCK.search(render(recommend_contract(named_config("tiny", environ=env))))
    assert found is not None
    return found.group(0)


def variant(config: str, mode: str, bounded: str) -> str:
    """recommend's config.pbtxt (as published) rewritten for ``mode``."""
    base = BATCHING_BLOCK.sub("", config)  # what the default publish writes: no batcher
    if mode == "no_batcher":
        return base
    block = bounded if mode == "queue_policy" else "dynamic_batching { }\n"
    return INSTANCE_GROUP.sub(lambda m: m.group(0) + block, base, count=1)


def closed_loop(grpc_url: str, visits: Any, requests: int) -> tuple[list[float], list[str]]:
    """One client, no retries: a first (cold) visit per user, then ``requests`` returning visits:
    each one's time (ms, refused ones included: a refusal by the queue timeout is a stall too)
    and the refusals' messages."""
    from genrec.client.errors import RecommendError
    from genrec.client.recommend_client import RecommendClient
    from genrec.client.retry import RetryPolicy

    client = RecommendClient(grpc_url, retry=RetryPolicy.none())
    users = len(visits.reqs)
    lat, refused = [], []
    for i in range(users + requests):
        u, cut = i % users, 3 if i < users else 2 - (i // users - 1) % 3
        t0 = time.perf_counter()
        try:
            visits.send(client, u, cut)
        except RecommendError as e:
            refused.append(str(e)[:80])
        if i >= users:
            lat.append((time.perf_counter() - t0) * 1e3)
    return lat, refused


def example_history(n: int = 5) -> dict[str, np.ndarray]:
    """A valid ``n``-event history for every named config, by input name (``CANARY_INPUTS`` order)."""
    return {
        "history_items": np.arange(1, n + 1, dtype=np.int64),
        "history_actions": np.zeros(n, np.int64),
        "history_timestamps": np.arange(n, dtype=np.float64) * 60 + 1.7e9,
        "history_devices": np.zeros(n, np.int64),
    }


def flood(grpc_url: str, n: int, deadline_s: float) -> dict[str, Any]:
    """``n`` concurrent requests at once, each with a client deadline: outcomes by status code
    (``messages``: the failures' messages), the slowest (s), and how long one request sent right
    after the flood takes (ms): a server still working through requests whose callers gave up
    answers it late."""
    from tritonclient.grpc import aio as grpcaio
    from tritonclient.utils import InferenceServerException

    from genrec.runtime.watchdog import CANARY_INPUTS

    history = example_history()

    async def run() -> tuple[list[tuple[str, str, float]], tuple[str, str, float]]:
        client = grpcaio.InferenceServerClient(grpc_url)

        async def one(timeout_s: float) -> tuple[str, str, float]:
            inputs = []
            for name, dtype in CANARY_INPUTS:
                t = grpcaio.InferInput(name, list(history[name].shape), dtype)
                t.set_data_from_numpy(history[name])
                inputs.append(t)
            t0 = time.perf_counter()
            try:
                await client.infer("recommend", inputs, client_timeout=timeout_s)
                return "OK", "", time.perf_counter() - t0
            except InferenceServerException as e:
                code = str(e.status() or "UNKNOWN").replace("StatusCode.", "")
                return code, (e.message() or "")[-40:], time.perf_counter() - t0

        try:
            return await asyncio.gather(*(one(deadline_s) for _ in range(n))), await one(10.0)
        finally:
            await client.close()

    results, (after, _, after_s) = asyncio.run(run())
    return {
        "requests": n,
        "deadline_s": deadline_s,
        "outcomes": dict(Counter(code for code, _, _ in results)),
        "messages": dict(Counter(msg for code, msg, _ in results if code != "OK")),
        "slowest_s": round(max(t for _, _, t in results), 3),
        "slowest_answered_s": round(max((t for code, _, t in results if code == "OK"), default=0.0), 3),
        "next_request": after,
        "next_request_ms": round(after_s * 1e3, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=None, help="trained run (default: the latest tiny run)")
    p.add_argument("--users", type=int, default=100, help="distinct returning users")
    p.add_argument("--requests", type=int, default=600, help="returning visits per mode, concurrency 1")
    p.add_argument("--stall-ms", type=float, default=250.0, help="a request slower than this counts as stalled")
    p.add_argument("--flood", type=int, default=400, help="concurrent requests of the flood (0: none)")
    p.add_argument("--flood-deadline-s", type=float, default=3.0, help="client deadline of each flood request")
    p.add_argument("--queue-size", type=int, default=64, help="queue_policy mode: max_queue_size")
    p.add_argument("--queue-timeout-ms", type=int, default=500, help="queue_policy mode: the queue timeout")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--lock", default=LOCK, help="benchmark lock file ('' = none)")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    a = p.parse_args(argv)
    from genrec.exporters.publish import publish_run

    run = a.run or latest_run(name="tiny")
    visits = visits_of(run, a.users)
    work = Path(tempfile.mkdtemp(prefix="genrec-queue-policy-"))
    rows = []
    load = [list(os.getloadavg())]
    try:
        say(f"publishing {run}")
        base = work / "repository"
        publish_run(run, base, progress=lambda m: None)
        config = (base / "recommend" / "config.pbtxt").read_text()
        bounded = bounded_block(a.queue_size, a.queue_timeout_ms)
        with bench_lock(a.lock):
            for mode in a.modes:
                repo = work / mode
                shutil.copytree(base, repo, symlinks=True)
                (repo / "recommend" / "config.pbtxt").write_text(variant(config, mode, bounded))
                state = work / f"state-{mode}"
                state.mkdir()
                with served(repo, state, {}, 300) as (grpc_url, _, _, load_s):
                    lat, refused = closed_loop(grpc_url, visits, a.requests)
                    row = {
                        "mode": mode,
                        **{k: round(v, 2) for k, v in percentiles(lat).items()},
                        "max_ms": round(max(lat), 1),
                        "requests": len(lat),
                        "stalled": int(sum(x > a.stall_ms for x in lat)),
                        "stalled_ms": sorted(round(x, 1) for x in lat if x > a.stall_ms),
                        "refused": len(refused),
                        "refusals": sorted(set(refused)),
                        "load_s": round(load_s, 1),
                    }
                    if a.flood:
                        row["flood"] = flood(grpc_url, a.flood, a.flood_deadline_s)
                rows.append(row)
                load.append(list(os.getloadavg()))
                say(
                    f"{mode:18s} p50 {row['p50_ms']:.1f} p99 {row['p99_ms']:.1f} max {row['max_ms']:.0f} ms, "
                    f"stalled {row['stalled']}/{row['requests']} (refused {row['refused']})"
                    + (f"; flood {row['flood']}" if a.flood else "")
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = {
        "machine": machine(),
        "versions": versions(),
        "created": now_iso(),
        "run": str(run),
        "stall_ms": a.stall_ms,
        "load_average": load,  # 1/5/15 min, before and after each mode (other jobs inflate latency)
        "rows": rows,
    }
    a.out.mkdir(parents=True, exist_ok=True)
    write_json(a.out / "queue_policy.json", out)
    say(f"wrote {a.out / 'queue_policy.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
