"""Open-loop latency: requests sent on a fixed arrival schedule, whether or not earlier ones
have returned, from light load to past saturation.

    python -m bench.open_loop                          # own tiny stack (Triton, Redis, feed), ~5 min
    python -m bench.open_loop --config small           # the latest small run (none is trained here)
    python -m bench.open_loop --stack-dir build/stack  # the stack `genrec-stack up` started
    python -m bench.open_loop --rates 10 40 --feed-rates 5 --window-s 5   # quicker

A closed-loop client waits for each answer before the next request, so a slow server also
slows the load down and its queueing never shows (coordinated omission). Here request ``i`` is
due at ``t0 + offset_i`` (constant intervals, or Poisson with ``--arrivals poisson``), it is
sent then even if hundreds are still in flight, and its latency counts from that due time
(``latency_ms``) as well as from the moment it actually left (``service_latency_ms``). The
generator checks itself: its lateness in sending (``schedule_lag_ms``, p99 under
``MAX_LAG_P99_MS``) and its own CPU (under ``MAX_GENERATOR_CPU`` cores), else the window is
flagged ``generator_ok: false``.

Targets, each through the project's asyncio client: ``recommend`` over gRPC
(``AsyncRecommendClient``) and ``POST /v1/feed`` (``AsyncFeedClient``, httpx). Users: the run's
users with their real histories, drawn Zipf (``loadtest/workload.py``), each visited once before
the sweep so the encoder-state cache holds them (the returning user's steady state). Per rate:
p50/p90/p99/p99.9, achieved rate, errors, and Triton's own means (request, queue, compute) from
its metrics. Writes bench/results/open_loop.json and open_loop.png.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.recommend_latency import stage_means
from genrec.artifacts import latest_run, machine, now_iso, versions, write_json
from genrec.client import AsyncFeedClient, AsyncRecommendClient, ClientError, RetryPolicy
from genrec.runtime.triton_server import metrics_settle_s, scrape_metrics
from loadtest.gate import DEFAULT_MAX_FAIL_RATIO, DEFAULT_P99_MS
from loadtest.workload import Workload, build

P99_GOAL_MS = DEFAULT_P99_MS["recommend"]  # the gates' targets: 50 ms recommend, 80 ms /v1/feed
FEED_P99_GOAL_MS = DEFAULT_P99_MS["/v1/feed"]
MAX_ERROR_RATIO = DEFAULT_MAX_FAIL_RATIO  # a rate with more failures does not pass, whatever its P99
MAX_LAG_P99_MS = 5.0  # the generator sends 99% of requests within this of their due time
MAX_GENERATOR_CPU = 0.8  # cores: the event loop is one thread; near 1.0 it is the bottleneck
REQUEST_TIMEOUT_S = 2.0  # past it a request is an error (DEADLINE_EXCEEDED), never retried
DRAIN_TIMEOUT_S = 30.0  # between windows: wait at most this long for the server's backlog to clear
DRAIN_PAUSE_S = 2.0  # between windows, for a target without a metrics page
ARRIVALS = ("uniform", "poisson")

RECOMMEND, FEED = "recommend (gRPC)", "POST /v1/feed"  # the sweeps, as the plot names them


def say(msg: str) -> None:
    print(f"[open-loop] {msg}", flush=True)


# ---- schedule and statistics (pure) ----------------------------------------------------------
def arrival_offsets(rate: float, duration_s: float, arrivals: str = "uniform", seed: int = 0) -> np.ndarray:
    """Due times (s from the start) of the requests of a ``rate``/s load lasting ``duration_s``:
    evenly spaced, or Poisson (exponential gaps, the same mean rate)."""
    if rate <= 0 or duration_s <= 0:
        return np.zeros(0)
    if arrivals == "uniform":
        return np.arange(int(math.floor(rate * duration_s))) / rate
    if arrivals != "poisson":
        raise ValueError(f"arrivals={arrivals!r}: expected one of {ARRIVALS}")
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, size=int(rate * duration_s * 1.5) + 20)
    t = np.cumsum(gaps) - gaps[0]  # the first request at 0, like the uniform schedule
    return t[t < duration_s]


def percentile(samples: Sequence[float] | np.ndarray, q: float) -> float:
    """Nearest-rank percentile: a value that was measured (never interpolated below the tail)."""
    a = np.sort(np.asarray(samples, dtype=float))
    if a.size == 0:
        return float("nan")
    return float(a[min(a.size - 1, max(0, math.ceil(q / 100.0 * a.size) - 1))])


def latency_summary(ms: Sequence[float] | np.ndarray) -> dict[str, float]:
    a = np.asarray(ms, dtype=float)
    if a.size == 0:
        return {k: float("nan") for k in ("p50", "p90", "p99", "p999", "mean", "max")}
    return {
        "p50": percentile(a, 50),
        "p90": percentile(a, 90),
        "p99": percentile(a, 99),
        "p999": percentile(a, 99.9),
        "mean": float(a.mean()),
        "max": float(a.max()),
    }


@dataclass(frozen=True)
class Outcome:
    """One request, times in seconds on the window's clock (0 = the first due time)."""

    due: float
    sent: float
    done: float
    error: str = ""  # "" for a success, else the error's code


def window_stats(outcomes: Sequence[Outcome], rate: float, warmup_s: float, cpu_s: float, wall_s: float) -> dict[str, Any]:
    """A window's figures; requests due in the first ``warmup_s`` are sent but not counted (the
    queue starts empty). ``cpu_s`` over ``wall_s``: the generator's own CPU."""
    kept = [o for o in outcomes if o.due >= warmup_s]
    ok = [o for o in kept if not o.error]
    errors = Counter(o.error for o in kept if o.error)
    span = (max(o.done for o in kept) - warmup_s) if kept else 0.0
    lag = [(o.sent - o.due) * 1e3 for o in kept]
    lag_p99 = percentile(lag, 99) if lag else float("nan")
    cpu = cpu_s / wall_s if wall_s > 0 else float("nan")
    return {
        "offered_rps": rate,
        "requests": len(kept),
        "ok": len(ok),
        "errors": sum(errors.values()),
        "error_ratio": sum(errors.values()) / len(kept) if kept else 0.0,
        "error_codes": dict(errors),
        "achieved_rps": len(ok) / span if span > 0 else 0.0,
        # from the due time: what a user of an open system waits (queueing in the generator included)
        "latency_ms": latency_summary([(o.done - o.due) * 1e3 for o in ok]),
        "service_latency_ms": latency_summary([(o.done - o.sent) * 1e3 for o in ok]),
        "schedule_lag_ms": {"p50": percentile(lag, 50) if lag else float("nan"), "p99": lag_p99, "max": max(lag, default=float("nan"))},
        "generator_cpu_cores": cpu,
        "generator_ok": bool(lag_p99 <= MAX_LAG_P99_MS and cpu <= MAX_GENERATOR_CPU),
    }


def passes(stats: dict[str, Any], p99_ms: float = P99_GOAL_MS, max_error_ratio: float = MAX_ERROR_RATIO) -> bool:
    """A rate is held when its P99 (from the due time) and its error ratio are within target."""
    return stats["ok"] > 0 and stats["latency_ms"]["p99"] <= p99_ms and stats["error_ratio"] <= max_error_ratio


@dataclass(frozen=True)
class Search:
    best_rps: float  # the highest rate that passed (0.0: none did, down to the floor)
    trials: list[tuple[float, bool]]  # (rate, passed) in the order tried

    @property
    def below_rps(self) -> float | None:
        """When no rate held: the lowest rate tried (the answer is below it); else None."""
        return min(r for r, _ in self.trials) if self.best_rps == 0.0 and self.trials else None


def search_rate(
    held: Callable[[float], bool],
    start: float,
    *,
    step: float = 1.5,
    rel_tol: float = 0.1,
    max_trials: int = 8,
    floor: float = 0.5,
    ceiling: float = 10_000.0,
) -> Search:
    """The highest rate that ``held``: from ``start``, step up (x``step``) while rates hold or down
    (/``step``) while they fail until a held rate and a failed one bracket the answer, then
    bisect the bracket (geometric midpoint) until it is within ``rel_tol``. At most
    ``max_trials`` measurements."""
    trials: list[tuple[float, bool]] = []

    def trial(rate: float) -> bool:
        ok = held(rate)
        trials.append((rate, ok))
        return ok

    lo: float | None = None
    hi: float | None = None
    r = min(max(start, floor), ceiling)
    if trial(r):
        lo = r
        while len(trials) < max_trials and r < ceiling:
            r = min(r * step, ceiling)
            if trial(r):
                lo = r
            else:
                hi = r
                break
    else:
        hi = r
        while len(trials) < max_trials and r > floor:
            r = max(r / step, floor)
            if trial(r):
                lo = r
                break
            hi = r
    if lo is None:
        return Search(0.0, trials)
    while hi is not None and hi / lo > 1 + rel_tol and len(trials) < max_trials:
        mid = math.sqrt(lo * hi)
        if trial(mid):
            lo = mid
        else:
            hi = mid
    return Search(lo, trials)


def triton_means(before: str, after: str, model: str = "recommend") -> dict[str, float]:
    """Triton's own per-request means (ms) between two scrapes of :8002/metrics: request (end to
    end inside the server), queue, compute (the model's execute) and its inputs and outputs."""
    out: dict[str, float] = {}

    def total(text: str, name: str) -> float:
        pat = re.compile(rf'^{name}\{{[^}}]*model="{model}"[^}}]*\}} ([0-9.e+-]+)$', re.M)
        return sum(float(v) for v in pat.findall(text))

    n = total(after, "nv_inference_request_success") - total(before, "nv_inference_request_success")
    if n <= 0:
        return out
    for key, name in (
        ("request_ms", "request_duration_us"),
        ("queue_ms", "queue_duration_us"),
        ("compute_input_ms", "compute_input_duration_us"),
        ("compute_ms", "compute_infer_duration_us"),
        ("compute_output_ms", "compute_output_duration_us"),
    ):
        out[key] = (total(after, f"nv_inference_{name}") - total(before, f"nv_inference_{name}")) / n / 1e3
    out["requests"] = n
    return out


def wait_idle(metrics_url: str | None, model: str = "recommend", timeout_s: float = DRAIN_TIMEOUT_S) -> float:
    """Wait until the server holds no request of ``model`` (queued or running), so one window's
    backlog (answers the generator stopped waiting for) does not slow the next; seconds waited.
    Without a metrics page (the alternatives), a fixed pause."""
    t0 = time.perf_counter()
    if not metrics_url:
        time.sleep(DRAIN_PAUSE_S)
        return time.perf_counter() - t0
    pattern = re.compile(rf'^nv_inference_pending_request_count\{{[^}}]*model="{model}"[^}}]*\}} (\S+)$', re.M)
    while time.perf_counter() - t0 < timeout_s:
        try:
            pending = sum(float(v) for v in pattern.findall(scrape_metrics(metrics_url)))
        except OSError:
            break
        if pending == 0:
            break
        time.sleep(0.2)
    return time.perf_counter() - t0


def scrape(metrics_url: str) -> str:
    """The metrics page once the requests so far are counted (custom metrics lag by a flush)."""
    try:
        return scrape_metrics(metrics_url, metrics_settle_s())
    except OSError:
        return ""


# ---- the generator ---------------------------------------------------------------------------
class OpenLoop:
    """Sends one target's requests on schedule from an event loop of its own; the target (a
    client) is made inside that loop and reused across windows."""

    def __init__(self, make_target: Callable[[], Target], users: Workload, seed: int = 0) -> None:
        self.loop = asyncio.new_event_loop()
        self.target = make_target()
        self.users = users
        self.rng = random.Random(seed)
        self.seed = seed

    def window(self, rate: float, duration_s: float, warmup_s: float = 1.0, arrivals: str = "uniform") -> dict[str, Any]:
        """Offer ``rate``/s for ``warmup_s + duration_s``; the figures of the last ``duration_s``."""
        self.seed += 1
        offsets = arrival_offsets(rate, warmup_s + duration_s, arrivals, self.seed)
        proc = psutil.Process()
        c0, w0 = proc.cpu_times(), time.perf_counter()
        outcomes = self.loop.run_until_complete(self._send_all(offsets))
        c1, w1 = proc.cpu_times(), time.perf_counter()
        return window_stats(outcomes, rate, warmup_s, (c1.user + c1.system) - (c0.user + c0.system), w1 - w0)

    def closed(self, requests: int, concurrency: int) -> list[float]:
        """``requests`` sent by ``concurrency`` closed-loop workers (warm-up, calibration); ms each."""
        return self.loop.run_until_complete(self._closed(requests, concurrency))

    async def _closed(self, requests: int, concurrency: int) -> list[float]:
        ms: list[float] = []
        users = [self.users.users[i % len(self.users.users)] for i in range(requests)]

        async def worker(k: int) -> None:
            for u in users[k::concurrency]:
                t = time.perf_counter()
                try:
                    await self.target.send(u)
                except ClientError:
                    continue
                ms.append((time.perf_counter() - t) * 1e3)

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        return ms

    async def _send_all(self, offsets: np.ndarray) -> list[Outcome]:
        users = [self.users.draw(self.rng) for _ in range(len(offsets))]
        t0 = time.perf_counter() + 0.02
        tasks = []
        for off, u in zip(offsets.tolist(), users):
            delay = t0 + off - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            # sent now even if earlier requests are still out: the schedule does not wait for answers
            tasks.append(asyncio.create_task(self._one(t0, off, u)))
        return list(await asyncio.gather(*tasks))

    async def _one(self, t0: float, due: float, user: dict[str, Any]) -> Outcome:
        sent = time.perf_counter() - t0
        error = ""
        try:
            await self.target.send(user)
        except ClientError as e:
            error = e.code or "error"
        except Exception as e:  # a transport or protocol failure the client did not type: counted
            error = type(e).__name__
        return Outcome(due, sent, time.perf_counter() - t0, error)

    def close(self) -> None:
        self.loop.run_until_complete(self.target.close())
        self.loop.close()


class Target:
    """What the generator sends: one request for a workload user."""

    async def send(self, user: dict[str, Any]) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class RecommendTarget(Target):
    """Triton's ``recommend`` (gRPC), or a service speaking its KServe v2 HTTP protocol (the
    alternatives in bench/alternatives/), through ``AsyncRecommendClient``; no client retries."""

    def __init__(self, url: str, protocol: str = "grpc", user_prefix: str = "ol-", timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.client = AsyncRecommendClient(url, protocol, timeout_s=timeout_s, retry=RetryPolicy.none(), max_connections=512)
        self.prefix = user_prefix

    async def send(self, user: dict[str, Any]) -> None:
        await self.client.recommend(
            user["items"],
            user["actions"],
            user["timestamps"],
            user["devices"],
            user_id=self.prefix + user["user_id"],
            segment=user["segment"],
            request_time=user["timestamps"][-1] + 60.0,
        )

    async def close(self) -> None:
        await self.client.close()


class FeedTarget(Target):
    """``POST /v1/feed`` for the user (seeded in Redis as ``u<i>``), 10 items, a fresh session."""

    def __init__(self, url: str, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.client = AsyncFeedClient(url, timeout_s=timeout_s, retry=RetryPolicy.none(), max_connections=512)

    async def send(self, user: dict[str, Any]) -> None:
        await self.client.feed(user["user_id"], count=10)

    async def close(self) -> None:
        await self.client.close()


def sweep(
    gen: OpenLoop, rates: Sequence[float], window_s: float, arrivals: str, metrics_url: str | None, label: str
) -> list[dict[str, Any]]:
    rows = []
    for rate in rates:
        before = scrape(metrics_url) if metrics_url else ""
        row = gen.window(rate, window_s, arrivals=arrivals)
        if metrics_url:
            after = scrape(metrics_url)
            row["triton_ms"] = triton_means(before, after)
            row["stages_ms"] = stage_means(before, after) if after else {}
        row["drain_s"] = wait_idle(metrics_url)
        rows.append(row)
        say(f"{label} {fmt_row(row)}")
    return rows


def fmt_row(r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    tri = r.get("triton_ms") or {}
    server = f" | triton request {tri['request_ms']:.1f} queue {tri['queue_ms']:.1f} ms" if "request_ms" in tri else ""
    flag = "" if r["generator_ok"] else "  GENERATOR LIMITED"
    return (
        f"{r['offered_rps']:7.1f}/s -> {r['achieved_rps']:6.1f}/s  p50 {lat['p50']:7.1f} p90 {lat['p90']:7.1f} p99 {lat['p99']:7.1f} "
        f"p99.9 {lat['p999']:7.1f} ms  err {r['errors']:4d}  lag p99 {r['schedule_lag_ms']['p99']:5.2f} ms  "
        f"cpu {r['generator_cpu_cores']:.2f}{server}{flag}"
    )


def saturation_rps(rows: Sequence[dict[str, Any]], p99_ms: float = P99_GOAL_MS) -> float:
    """The highest offered rate of a sweep that held the P99 target with no more than the allowed errors."""
    held = [r["offered_rps"] for r in rows if passes(r, p99_ms)]
    return max(held, default=0.0)


def plot(path: Path, series: dict[str, list[dict[str, Any]]], goals: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(series), figsize=(6 * len(series), 4.2), squeeze=False)
    for ax, (name, rows) in zip(axes[0], series.items()):
        x = [r["offered_rps"] for r in rows]
        for key, style in (("p50", "o-"), ("p90", "s-"), ("p99", "^-"), ("p999", "v--")):
            ax.plot(x, [r["latency_ms"][key] for r in rows], style, label=key.replace("p999", "p99.9"))
        goal = goals.get(name, P99_GOAL_MS)
        ax.axhline(goal, color="grey", linestyle=":", label=f"P99 target {goal:.0f} ms")
        ax.set_yscale("log")
        ax.set_xlabel("offered rate (requests/s, open loop)")
        ax.set_ylabel("latency from the due time (ms)")
        ax.set_title(name)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_workload(run: Path, users: int) -> Workload:
    path = Path(tempfile.mkdtemp(prefix="genrec-open-loop-")) / "workload.json"
    return Workload.load(build(run, path, max_users=users))


def main(argv: list[str] | None = None) -> int:
    from genrec.runtime.stack import Stack

    p = argparse.ArgumentParser(prog="python -m bench.open_loop", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", help="config of the run and the stack this script starts (default tiny)")
    p.add_argument("--run", type=Path, default=None, help="trained run (default: the config's latest)")
    p.add_argument("--stack-dir", type=Path, default=None, help="measure the stack `genrec-stack up` started there (default: start one)")
    p.add_argument("--triton-grpc", default=None, help="measure this Triton (host:port) instead; with --feed-url, --metrics-url")
    p.add_argument("--feed-url", default=None, help="with --triton-grpc: the feed service to measure (default: no feed sweep)")
    p.add_argument("--metrics-url", default=None, help="with --triton-grpc: Triton's metrics (http://host:8002/metrics)")
    p.add_argument("--rates", type=float, nargs="+", default=[5, 20, 40, 60, 80, 100, 120, 150], help="recommend rates (req/s)")
    p.add_argument("--feed-rates", type=float, nargs="*", default=[5, 10, 20, 30, 40, 60], help="/v1/feed rates (none: skip the feed)")
    p.add_argument("--window-s", type=float, default=10.0, help="measured seconds per rate (after 1 s not counted)")
    p.add_argument("--arrivals", choices=ARRIVALS, default="uniform")
    p.add_argument("--users", type=int, default=2000, help="workload users (the run's first N, drawn Zipf)")
    p.add_argument("--out", type=Path, default=Path("bench/results/open_loop.json"))
    a = p.parse_args(argv)

    own: Stack | None = None
    tmp: tempfile.TemporaryDirectory | None = None
    try:
        if a.triton_grpc:  # servers given: nothing started
            run, config = a.run or latest_run(name=a.config), a.config
            grpc_url, feed_url, metrics_url = a.triton_grpc, a.feed_url, a.metrics_url
        elif a.stack_dir is not None:
            stack = Stack(a.stack_dir)
            loaded = stack.load()
            if loaded is None or not stack.status()["up"]:
                say(f"no healthy stack under {a.stack_dir} (genrec-stack up)")
                return 1
            run, config, grpc_url, feed_url, metrics_url = (
                Path(loaded.run),
                loaded.config,
                loaded.triton_grpc,
                loaded.feed_url,
                loaded.triton_metrics,
            )
        else:
            run = a.run or latest_run(name=a.config)
            tmp = tempfile.TemporaryDirectory(prefix="genrec-open-loop-stack-")
            own = Stack(Path(tmp.name))
            say(f"starting a stack of its own on free ports ({run})")
            st = own.up(a.config, run, None, {}, True, None, 600)
            config, grpc_url, feed_url, metrics_url = st.config, st.triton_grpc, st.feed_url, st.triton_metrics
        work = load_workload(Path(run), a.users)
        say(f"{len(work.users)} users; recommend at {grpc_url}, feed at {feed_url or '-'}; load average {os.getloadavg()[0]:.1f}")
        result: dict[str, Any] = {
            "machine": machine(),
            "versions": versions(),
            "created": now_iso(),
            "run": str(run),
            "config": config,
            "arrivals": a.arrivals,
            "window_s": a.window_s,
            "users": len(work.users),
            "p99_goal_ms": P99_GOAL_MS,
            "load_average_before": list(os.getloadavg()),
        }
        series: dict[str, list[dict[str, Any]]] = {}
        rec = OpenLoop(lambda: RecommendTarget(grpc_url), work)
        try:
            rec.closed(len(work.users), 2)  # every user once: their encoder states are cached
            series[RECOMMEND] = sweep(rec, a.rates, a.window_s, a.arrivals, metrics_url, "recommend")
        finally:
            rec.close()
        if a.feed_rates and feed_url:
            feed = OpenLoop(lambda: FeedTarget(feed_url), work)
            try:
                feed.closed(len(work.users), 2)
                series[FEED] = sweep(feed, a.feed_rates, a.window_s, a.arrivals, None, "feed")
            finally:
                feed.close()
        result["load_average_after"] = list(os.getloadavg())
        result["recommend"] = series[RECOMMEND]
        result["recommend_saturation_rps"] = saturation_rps(result["recommend"])
        if FEED in series:
            result["feed"] = series[FEED]
            result["feed_saturation_rps"] = saturation_rps(result["feed"], FEED_P99_GOAL_MS)
    finally:
        if own is not None:
            own.down()
        if tmp is not None:
            tmp.cleanup()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out, result)
    plot(a.out.with_suffix(".png"), series, {RECOMMEND: P99_GOAL_MS, FEED: FEED_P99_GOAL_MS})
    say(f"recommend held P99 <= {P99_GOAL_MS:.0f} ms up to {result['recommend_saturation_rps']:.0f} req/s (of the rates tried)")
    say(f"wrote {a.out} and {a.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
