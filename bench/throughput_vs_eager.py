"""Throughput at P99 <= 50 ms: Triton ``recommend`` against what a team would build instead.

    python -m bench.throughput_vs_eager                  # small (the latest small run), ~12 min
    python -m bench.throughput_vs_eager --config tiny    # tiny, ~8 min -> throughput_vs_eager_tiny.json
    python -m bench.throughput_vs_eager --only eager no_triton --window-s 4   # a part, quicker

The same trained run served four ways, one after the other on this machine, each alone:

- ``ours``: Triton with ``recommend`` as published (one instance, in-process onnxruntime, the
  per-user encoder-state cache, KV-cached beam search, milvus-lite), over gRPC;
- ``ours_2_instances_redis``: the same with two ``recommend`` instances sharing their encoder
  states in Redis (``GENREC_SERVING__STATE_STORE=redis``, as bench/encoder_state_placement.py);
- ``eager``: the PyTorch reference pipeline on the run's ``.pt`` weights in a Starlette service
  (bench/alternatives/eager.py): whole-history encoding, beam search without KV cache, no ONNX,
  no batching; one torch thread by default (``--eager-threads``), the CPU ours gets (onnxruntime
  runs one intra-op thread): torch's default, a thread per core, spins OpenMP workers that fight
  the server's other threads and the generator for the 2 cores, and on a busy machine held no
  rate at all (p50 43-56 ms from 4 req/s up, load average ~7);
- ``no_triton``: the same ONNX graphs and ``ServingPipeline`` as ours in a Starlette service
  (bench/alternatives/no_triton.py): Triton's cost and benefit, with the pipeline held equal.

The alternatives speak Triton's KServe v2 HTTP protocol, so one client (``AsyncRecommendClient``)
drives all four with the same users (the run's, real histories, drawn Zipf; each visited once
first). For each, the open-loop generator (bench/open_loop.py) searches the highest constant
arrival rate whose P99 (from the due time) stays <= 50 ms with at most 0.1% errors: from a start
near the measured capacity, step up or down until a held rate and a failed one bracket it, then
bisect. Writes bench/results/throughput_vs_eager.json and .png.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bench.alternatives.service_process import ServiceProcess
from bench.open_loop import (
    ARRIVALS,
    P99_GOAL_MS,
    OpenLoop,
    RecommendTarget,
    Target,
    fmt_row,
    load_workload,
    passes,
    say,
    scrape,
    search_rate,
    triton_means,
    wait_idle,
)
from genrec.artifacts import latest_run, machine, now_iso, versions, write_json

SETUPS = ("ours", "ours_2_instances_redis", "no_triton", "eager")
GOAL_RATIO = 5.0  # ours >= 5x eager


@contextmanager
def triton(repository: Path, state: Path, instances: int, redis_url: str | None) -> Iterator[tuple[str, str | None]]:
    """Triton on free ports serving ``repository`` (a copy with ``instances`` recommend instances
    when not 1); yields (gRPC url, metrics url)."""
    from bench.encoder_state_placement import repository_with_instances
    from bench.recommend_latency import start

    if instances != 1:
        repository = repository_with_instances(repository, state / f"repository-{instances}", instances)
    env = {"GENREC_SERVING__STATE_STORE": "redis", "GENREC_SERVING__REDIS_URL": redis_url} if redis_url else {}
    server = start(repository, state, **env)
    try:
        yield server.grpc_url, f"http://localhost:{server.metrics_port}/metrics"
    finally:
        server.stop()


@contextmanager
def alternative(module: str, args: list[str], state: Path) -> Iterator[tuple[str, str | None]]:
    env = {"GENREC_SERVING__STATE_DIR": str(state)}
    with ServiceProcess(module, args, state / f"{module.rsplit('.', 1)[-1]}.log", env).start() as svc:
        yield svc.url, None


def find_rate(
    make_target: Callable[[], Target],
    work: Any,
    metrics_url: str | None,
    window_s: float,
    max_trials: int,
    arrivals: str,
    capacity_x: float,
) -> dict[str, Any]:
    """The search for one setup: warm-up and calibration (every user once, closed loop, one at a
    time), then the rate search; every trial's figures are kept."""
    gen = OpenLoop(make_target, work)
    try:
        warm = gen.closed(len(work.users), 1)
        if not warm:
            raise RuntimeError("every warm-up request failed")
        service_ms = float(np.median(warm))
        start = 0.7 * capacity_x * 1e3 / service_ms  # a single server saturates near 1/service time
        say(f"  warm-up: {len(warm)} requests, median {service_ms:.1f} ms alone; search starts at {start:.1f} req/s")
        trials: list[dict[str, Any]] = []

        def held(rate: float) -> bool:
            before = scrape(metrics_url) if metrics_url else ""
            row = gen.window(rate, window_s, arrivals=arrivals)
            if metrics_url:
                row["triton_ms"] = triton_means(before, scrape(metrics_url))
            row["passed"] = passes(row)
            row["drain_s"] = wait_idle(metrics_url)  # the next trial starts on an idle server
            trials.append(row)
            say(f"  {'held' if row['passed'] else 'FAIL'} {fmt_row(row)}")
            return row["passed"]

        search = search_rate(held, start, step=1.3, rel_tol=0.08, max_trials=max_trials)
    finally:
        gen.close()
    best = next((t for t in trials if t["offered_rps"] == search.best_rps), None)
    return {
        "rps_at_p99_50ms": search.best_rps,
        "below_rps": search.below_rps,  # no rate held: the lowest one tried (the answer is below it)
        "warmup_median_ms": service_ms,
        "at_best": best,
        "trials": trials,
        "generator_ok": all(t["generator_ok"] for t in trials),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.throughput_vs_eager", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default="small", help="which run: the config's latest (default small, what scripts/demo.sh trains)")
    p.add_argument("--run", type=Path, default=None, help="trained run (default: the config's latest)")
    p.add_argument("--repository", type=Path, default=None, help="a repository with the run published (default: publish to a temp one)")
    p.add_argument("--triton-grpc", default=None, help="measure this running Triton as `ours` instead of starting one")
    p.add_argument("--only", nargs="+", choices=SETUPS, default=list(SETUPS))
    p.add_argument("--window-s", type=float, default=8.0, help="measured seconds per trial rate (after 1 s not counted)")
    p.add_argument("--max-trials", type=int, default=7, help="rates tried per setup")
    p.add_argument("--arrivals", choices=ARRIVALS, default="uniform")
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--eager-threads", type=int, default=1, help="torch intra-op threads of the eager service (0: torch's default)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results (default bench/results/throughput_vs_eager.json; _<config>.json for another config than small)",
    )
    a = p.parse_args(argv)

    run = (a.run or latest_run(name=a.config)).resolve()
    if a.out is None:
        config = run.name.rsplit("-", 1)[0]
        a.out = Path("bench/results/throughput_vs_eager.json" if config == "small" else f"bench/results/throughput_vs_eager_{config}.json")
    tmp = Path(tempfile.mkdtemp(prefix="genrec-throughput-"))
    redis = None
    results: dict[str, dict[str, Any]] = {}
    load = [list(os.getloadavg())]
    try:
        repo = a.repository
        if repo is None:
            from genrec.exporters.publish import publish_run

            repo = tmp / "model_repository"
            say(f"publishing {run} to {repo}")
            publish_run(run, repo, progress=lambda m: None)
        version_dir = max((d for d in (repo / "recommend").iterdir() if d.name.isdigit()), key=lambda d: int(d.name))
        work = load_workload(run, a.users)
        say(f"{len(work.users)} users of {run}; recommend version {version_dir}; load average {os.getloadavg()[0]:.1f}")

        def setup(name: str):  # -> a context manager yielding (url, metrics url or None)
            state = tmp / name
            state.mkdir()
            if name == "ours":
                if a.triton_grpc:
                    return _given(a.triton_grpc)
                return triton(repo, state, 1, None)
            if name == "ours_2_instances_redis":
                nonlocal redis
                from genrec.runtime.redis_server import RedisServer

                redis = RedisServer(maxmemory="512mb").start()
                return triton(repo, state, 2, redis.url)
            if name == "eager":
                return alternative("bench.alternatives.eager", ["--run", str(run), "--threads", str(a.eager_threads)], state)
            return alternative("bench.alternatives.no_triton", ["--version-dir", str(version_dir)], state)

        for name in [s for s in SETUPS if s in a.only]:
            say(f"{name}: starting")
            with setup(name) as (url, metrics):
                protocol = "grpc" if name.startswith("ours") else "http"
                instances = 2 if name == "ours_2_instances_redis" else 1
                results[name] = find_rate(
                    lambda url=url, protocol=protocol, name=name: RecommendTarget(url, protocol, user_prefix=f"{name}-"),
                    work,
                    metrics,
                    a.window_s,
                    a.max_trials,
                    a.arrivals,
                    instances,
                )
                results[name]["protocol"] = protocol
            load.append(list(os.getloadavg()))
            say(f"{name}: {held_text(results[name])} req/s at P99 <= {P99_GOAL_MS:.0f} ms")
            if redis is not None:
                redis.stop()
                redis = None
    finally:
        if redis is not None:
            redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    out = summary(results, run, a, load)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out, out)
    plot(a.out.with_suffix(".png"), results)
    for k in ("ratio", "ratio_at_least", "alone_median_ratio", "ratio_vs_no_triton", "ratio_2_instances_vs_eager"):
        if out.get(k) is not None:
            say(f"{k}: {out[k]:.2f}")
    say(f"wrote {a.out} and {a.out.with_suffix('.png')}")
    return 0


@contextmanager
def _given(url: str) -> Iterator[tuple[str, str | None]]:
    yield url, None


def held_text(result: dict[str, Any], fmt: str = "{:.1f}") -> str:
    """The rate held, or "< r" when none held (r the lowest rate tried), never a bare 0."""
    below = result.get("below_rps")
    return f"< {fmt.format(below)}" if below is not None else fmt.format(result["rps_at_p99_50ms"])


def _ratio(a: float | None, b: float | None) -> float | None:
    """a / b; None when either is missing or b held no rate at all (no finite ratio)."""
    if a is None or b is None or b <= 0:
        return None
    return a / b


def eager_ratios(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """ours / eager at P99 <= 50 ms; when eager held no rate, ``ratio_at_least``: ours over the
    lowest rate eager was tried at (it held less), a lower bound. ``alone_median_ratio``: eager's
    median over ours, each alone (closed loop): the per-request cost, whatever the P99 target."""
    ours, eager = results.get("ours", {}), results.get("eager", {})
    held = ours.get("rps_at_p99_50ms")
    at_least = _ratio(held, eager.get("below_rps")) if eager.get("below_rps") is not None else None
    return {
        "ratio": _ratio(held, eager.get("rps_at_p99_50ms")),
        "ratio_at_least": at_least,
        "alone_median_ratio": _ratio(eager.get("warmup_median_ms"), ours.get("warmup_median_ms")),
    }


def summary(results: dict[str, dict[str, Any]], run: Path, a: argparse.Namespace, load: list[list[float]]) -> dict[str, Any]:
    rps = {k: v["rps_at_p99_50ms"] for k, v in results.items()}
    ours, eager, nt, two = rps.get("ours"), rps.get("eager"), rps.get("no_triton"), rps.get("ours_2_instances_redis")
    vs_eager = eager_ratios(results)
    ratio = vs_eager["ratio"] if vs_eager["ratio"] is not None else vs_eager["ratio_at_least"]
    return {
        "machine": machine(),
        "versions": versions(),
        "created": now_iso(),
        "run": str(run),
        "config": a.config if a.run is None else run.name.rsplit("-", 1)[0],
        "p99_goal_ms": P99_GOAL_MS,
        "arrivals": a.arrivals,
        "window_s": a.window_s,
        "eager_torch_threads": a.eager_threads or "torch default",
        "load_average": load,  # 1/5/15-min load averages before the first setup and after each
        "ours_rps_at_p99_50ms": ours,
        "ours_2_instances_redis_rps_at_p99_50ms": two,
        "eager_rps_at_p99_50ms": eager,
        "no_triton_rps_at_p99_50ms": nt,
        **vs_eager,
        "ratio_vs_no_triton": _ratio(ours, nt),
        "ratio_2_instances_vs_eager": _ratio(two, eager),
        "goal_ratio": GOAL_RATIO,
        "goal_met": ratio is not None and ratio >= GOAL_RATIO,
        "setups": results,
    }


def plot(path: Path, results: dict[str, dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    names = list(results)
    ax1.bar(names, [results[n]["rps_at_p99_50ms"] for n in names], color=["C0", "C1", "C2", "C3"][: len(names)])
    for i, n in enumerate(names):
        ax1.text(i, results[n]["rps_at_p99_50ms"], held_text(results[n], "{:.0f}"), ha="center", va="bottom")
    ax1.set_ylabel(f"requests/s at P99 <= {P99_GOAL_MS:.0f} ms")
    ax1.set_title("throughput at the P99 target (open loop)")
    ax1.tick_params(axis="x", labelsize=8)
    for i, n in enumerate(names):
        t = sorted(results[n]["trials"], key=lambda r: r["offered_rps"])
        ax2.plot([r["offered_rps"] for r in t], [r["latency_ms"]["p99"] for r in t], "o-", color=f"C{i}", label=n)
    ax2.axhline(P99_GOAL_MS, color="grey", linestyle=":", label="P99 target")
    ax2.set_yscale("log")
    ax2.set_xscale("log")
    ax2.set_xlabel("offered rate (requests/s)")
    ax2.set_ylabel("P99 from the due time (ms)")
    ax2.set_title("every rate the search tried")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
