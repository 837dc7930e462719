"""Cold-start cost by history length: one encoder block per graph call against several, side by side.

    python -m bench.cold_start                                  # tiny (trained run) and small (random weights)
    python -m bench.cold_start --configs tiny --lengths 16 256 --repeats 2   # a few seconds

A cold user (no cached encoder state: a first visit, an evicted state, or every user right after
a new model version) has their whole history encoded block by block. Per config and history
length L, the in-process serving pipeline (``ServingPipeline`` on published ONNX graphs, the code
Triton runs; 1 onnxruntime thread; exact ANN so retrieval is not what is measured) serves:

- cold: a fresh user with L events (encoder-cache miss): the whole request and its encode stage;
- returning: a user whose state holds L - 4 events comes back with L (a hit with 4 new events).

Both paths run interleaved in one process on the same graphs: ``encoder_blocks_per_call`` 1 (one
block per call, the path before) and 0 (as many blocks per call as stay exact). Reported per
length: p50/p99 over the repeats (wall time, and the encode's CPU time, which the machine's
load does not inflate), encoder graph calls, tokens per call, the time inside graph calls
(contract check + onnxruntime) against the Python around them, whether both paths return the same
items (and the largest score / user-vector difference), and the load average while measured.

``tiny`` uses the latest trained run (artifacts/runs/tiny-*). ``small`` has no trained run here
and training it takes >15 min, but the cost does not depend on the weights: its models are built
by ``genrec.train.train`` with one short epoch and tiny ranker/pCTR fits (near-random weights,
the ``small`` model sizes) and published by ``genrec.exporters.publish.publish_run`` like any run.
Both are kept under ``--work`` and reused. Writes bench/results/cold_start.json and .png.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genrec.artifacts import latest_run, machine, now_iso, runs, versions, write_json
from genrec.data.schema import History
from genrec.ensemble.catalogue import Catalogue
from genrec.ensemble.encoder_cache import EncoderCache
from genrec.ensemble.onnx_sessions import OnnxSessionRunner
from genrec.ensemble.request_types import RecommendRequest
from genrec.ensemble.request_validation import validate_options
from genrec.ensemble.retrieval import ExactIndex
from genrec.ensemble.serving_pipeline import ServingPipeline
from genrec.ensemble.serving_setup import load_setup
from genrec.settings import Config, named_config, with_overrides

NEW_EVENTS = 4  # events a returning user brings
PATHS = {"one_block": 1, "spans": 0}  # name -> ServingConfig.encoder_blocks_per_call
BEFORE, AFTER = "one_block", "spans"
START_TIME = 1_700_000_000  # first event of a bench history (unix seconds)
EVENT_GAP_S = 60  # seconds between a bench history's events
CACHE_BYTES = 2**31  # every bench user's state stays cached
# the `small` stand-in run: the small model sizes, trained just enough to produce a run folder
SMALL_STAND_IN = {
    "train.epochs": "1",
    "train.cuts_per_user": "1",
    "train.validation_users": "100",
    "train.ranker_users": "100",
    "train.ranker_rounds": "10",
    "semantic_id.epochs": "5",
    "ads.ctr_requests_per_user": "3",
    "ads.ctr_epochs": "1",
}


def stand_in_run(name: str, work: Path, progress: Callable[[str], None]) -> Path:
    """A run of config ``name`` with near-random weights (cost does not depend on them), reused."""
    from genrec.train import train

    root = work / "runs"
    found = [r for r in runs(root, name) if (r / "manifest.json").exists()]
    if found:
        return found[-1]
    progress(f"[cold_start] building a {name} stand-in run (near-random weights) under {root}")
    return train(with_overrides(named_config(name, environ={}), SMALL_STAND_IN), root=root, skip_sasrec=True)


def published_version(run: Path, repository: Path) -> Path:
    """The run published (exported with parity gates) into ``repository``; reused when it is there."""
    from genrec.exporters.publish import publish_run, version_numbers

    rec = repository / "recommend"
    if not (rec.exists() and version_numbers(rec)):
        publish_run(run, repository, progress=lambda m: None)
    return rec / str(version_numbers(rec)[-1])


@dataclass
class CallCounter:
    """Wraps the encoder's block function: graph calls, tokens and seconds inside them."""

    block: Callable
    calls: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def __call__(self, feeds: dict[str, np.ndarray]):
        t = time.perf_counter()
        out = self.block(feeds)
        self.seconds += time.perf_counter() - t
        self.calls += 1
        self.tokens += int(feeds["pos"].size)
        return out

    def reset(self) -> None:
        self.calls, self.tokens, self.seconds = 0, 0, 0.0


@dataclass
class CpuTimed:
    """Wraps a pipeline's ``encode``: the CPU seconds of its last call. Onnxruntime runs on the
    calling thread (1 intra-op thread), so this is the encode's own work, whatever the load."""

    encode: Callable
    last_cpu_s: float = 0.0

    def __call__(self, req: RecommendRequest):
        t = time.thread_time()
        out = self.encode(req)
        self.last_cpu_s = time.thread_time() - t
        return out


def pipelines(version: Path, cache: EncoderCache) -> tuple[Config, dict[str, ServingPipeline], dict[str, CallCounter]]:
    """One pipeline per path on the same sessions, catalogue, ANN and state cache."""
    setup = load_setup(version, environ={})
    outputs = setup.outputs()
    runner = OnnxSessionRunner({m: setup.graph_path(m) for m in outputs}, outputs, threads=1)
    cat = Catalogue.load(version)
    ann = ExactIndex(cat.item_vectors)
    pipes, counters = {}, {}
    for name, per_call in PATHS.items():
        p = ServingPipeline(setup.cfg, cat, runner, ann, cache, blocks_per_call=per_call)
        counters[name] = CallCounter(p.encoder.block)
        p.encoder.block = counters[name]
        p.encode = CpuTimed(p.encode)  # type: ignore[method-assign]
        pipes[name] = p
    return setup.cfg, pipes, counters


def bench_history(rng: np.random.Generator, n_items: int, n_devices: int, length: int) -> History:
    ts = START_TIME + EVENT_GAP_S * np.arange(length, dtype=np.int64)
    return History(rng.integers(0, n_items, length), rng.integers(0, 4, length), ts, rng.integers(0, n_devices, length))


def visit(h: History, n: int, options, user_id: str) -> RecommendRequest:
    """The first ``n`` events of ``h``, a minute after the last one."""
    return RecommendRequest(h.head(n), options, 1, 0, ctx_time=int(h.timestamp[n - 1]) + EVENT_GAP_S, user_id=user_id)


def stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean())}


def measure_config(
    cfg: Config, pipes: dict[str, ServingPipeline], counters: dict[str, CallCounter], lengths: list[int], repeats: int, seed: int
) -> list[dict]:
    rng = np.random.default_rng(seed)
    options = validate_options(cfg.pipeline)
    n_items = int(next(iter(pipes.values())).cat.item_vectors.shape[0])
    rows = []
    for length in lengths:
        h = bench_history(rng, n_items, cfg.data.n_devices, length)
        load = [os.getloadavg()[0]]
        res: dict[str, dict[str, list]] = {
            p: {"total": [], "encode": [], "encode_cpu": [], "graph": [], "returning": [], "items": [], "scores": [], "user": []}
            for p in PATHS
        }
        calls: dict[str, tuple[int, int]] = {}
        for rep in range(repeats):
            order = list(PATHS) if rep % 2 == 0 else list(PATHS)[::-1]  # interleaved, alternating who goes first
            for name in order:
                pipe, counter = pipes[name], counters[name]
                counter.reset()
                t = time.perf_counter()
                rec = pipe.recommend(visit(h, length, options, f"cold-{length}-{rep}-{name}"))
                total = (time.perf_counter() - t) * 1e3
                assert rec.cache == "miss"
                calls[name] = (counter.calls, counter.tokens)
                r = res[name]
                r["total"].append(total)
                r["encode"].append(rec.stage_ms["encode"])
                r["encode_cpu"].append(pipe.encode.last_cpu_s * 1e3)  # type: ignore[attr-defined]
                r["graph"].append(counter.seconds * 1e3)
                r["items"].append(rec.items)
                r["scores"].append(rec.scores)
                r["user"].append(rec.user_vector)
                if length > NEW_EVENTS:  # returning: a state of L-4 events (seeded on the spans path), then L
                    uid = f"back-{length}-{rep}-{name}"
                    pipes[AFTER].encode(visit(h, length - NEW_EVENTS, options, uid))  # caches the state
                    t = time.perf_counter()
                    back = pipe.recommend(visit(h, length, options, uid))
                    r["returning"].append((time.perf_counter() - t) * 1e3)
                    assert back.cache == "hit"
        load.append(os.getloadavg()[0])
        b, a = res[BEFORE], res[AFTER]
        row: dict = {"config": cfg.name, "history_events": length, "tokens": 2 * length + 1, "repeats": repeats, "load_avg_1min": load}
        for name in PATHS:
            r = res[name]
            n_calls, n_tokens = calls[name]
            row[name] = {
                "cold_request": stats(r["total"]),
                "cold_encode": stats(r["encode"]),
                "cold_encode_cpu": stats(r["encode_cpu"]),
                "encoder_graph_calls": n_calls,
                "tokens_per_call": n_tokens / max(1, n_calls),
                "encode_in_graph_calls_ms_p50": float(np.median(r["graph"])),
                "encode_python_ms_p50": float(np.median(np.subtract(r["encode"], r["graph"]))),
                "returning_request": stats(r["returning"]) if r["returning"] else None,
            }
        row["same_items"] = all(np.array_equal(x, y) for x, y in zip(b["items"], a["items"]))
        row["max_score_diff"] = float(
            max(np.abs(x - y).max() if x.size and x.shape == y.shape else 0.0 for x, y in zip(b["scores"], a["scores"]))
        )
        row["max_user_vector_diff"] = float(max(np.abs(x - y).max() for x, y in zip(b["user"], a["user"])))
        row["cold_encode_p50_ratio"] = row[BEFORE]["cold_encode"]["p50_ms"] / row[AFTER]["cold_encode"]["p50_ms"]
        row["cold_encode_cpu_p50_ratio"] = row[BEFORE]["cold_encode_cpu"]["p50_ms"] / row[AFTER]["cold_encode_cpu"]["p50_ms"]
        row["cold_request_p50_ratio"] = row[BEFORE]["cold_request"]["p50_ms"] / row[AFTER]["cold_request"]["p50_ms"]
        rows.append(row)
        print(
            f"[cold_start] {cfg.name:5s} L={length:5d}: encode p50 {row[BEFORE]['cold_encode']['p50_ms']:8.1f} -> {row[AFTER]['cold_encode']['p50_ms']:7.1f} ms "
            f"(x{row['cold_encode_p50_ratio']:.2f}; CPU {row[BEFORE]['cold_encode_cpu']['p50_ms']:.1f} -> {row[AFTER]['cold_encode_cpu']['p50_ms']:.1f} ms, "
            f"x{row['cold_encode_cpu_p50_ratio']:.2f}), calls {row[BEFORE]['encoder_graph_calls']} -> {row[AFTER]['encoder_graph_calls']}, "
            f"same items {row['same_items']}, load {load[0]:.1f}",
            flush=True,
        )
    return rows


def print_table(rows: list[dict]) -> None:
    head = (
        f"{'config':6s} {'events':>6s} | {'encode p50/p99 ms (1 block/call)':>32s} | {'encode p50/p99 ms (spans)':>26s} | {'ratio':>5s} | {'CPU ms':>13s} | "
        f"{'calls':>11s} | {'tok/call':>9s} | {'request p50 ms':>15s} | {'returning p50 ms':>16s} | same"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        b, a = r[BEFORE], r[AFTER]
        ret = lambda x: f"{x['returning_request']['p50_ms']:.1f}" if x["returning_request"] else "-"  # noqa: E731
        print(
            f"{r['config']:6s} {r['history_events']:6d} | {b['cold_encode']['p50_ms']:15.1f} / {b['cold_encode']['p99_ms']:14.1f} | "
            f"{a['cold_encode']['p50_ms']:12.1f} / {a['cold_encode']['p99_ms']:11.1f} | {r['cold_encode_p50_ratio']:5.2f} | "
            f"{b['cold_encode_cpu']['p50_ms']:6.1f}->{a['cold_encode_cpu']['p50_ms']:5.1f} | "
            f"{b['encoder_graph_calls']:5d}->{a['encoder_graph_calls']:4d} | {b['tokens_per_call']:4.0f}->{a['tokens_per_call']:3.0f} | "
            f"{b['cold_request']['p50_ms']:6.0f}->{a['cold_request']['p50_ms']:6.0f} | {ret(b):>7s}->{ret(a):>6s} | {r['same_items']}"
        )


def plot(path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = sorted({r["config"] for r in rows}, key=[r["config"] for r in rows].index)
    fig, axes = plt.subplots(1, len(configs), figsize=(5.5 * len(configs), 4), squeeze=False)
    for ax, c in zip(axes[0], configs):
        rs = [r for r in rows if r["config"] == c]
        x = [r["history_events"] for r in rs]
        for name, style in ((BEFORE, "o-"), (AFTER, "s-")):
            ax.plot(x, [r[name]["cold_encode"]["p50_ms"] for r in rs], style, label=f"cold encode, {name}")
            ax.plot(x, [r[name]["cold_request"]["p50_ms"] for r in rs], style, alpha=0.4, label=f"cold request, {name}")
        back = [(r["history_events"], r[AFTER]["returning_request"]["p50_ms"]) for r in rs if r[AFTER]["returning_request"]]
        if back:
            ax.plot(*zip(*back), "k^--", label="returning request (+4 events)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("history length (events)")
        ax.set_ylabel("p50 ms")
        ax.set_title(f"{c}: cold start by history length")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["tiny", "small"], choices=["tiny", "small"])
    p.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 256, 1024, 2048, 4096], help="history events")
    p.add_argument("--repeats", type=int, default=5, help="cold (and returning) visits per length and path")
    p.add_argument("--tiny-run", type=Path, default=None, help="trained tiny run (default: the latest)")
    p.add_argument("--work", type=Path, default=Path("build/bench/cold_start"), help="stand-in runs and published repositories (reused)")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    rows, sources = [], {}
    for name in a.configs:
        if name == "tiny":
            run = a.tiny_run or latest_run(name="tiny")
        else:
            run = stand_in_run(name, a.work, print)
        version = published_version(run, a.work / f"repository-{run.name}")
        sources[name] = {
            "run": str(run),
            "recommend_version": str(version),
            "weights": "trained" if name == "tiny" else "near-random stand-in",
        }
        cfg, pipes, counters = pipelines(version, EncoderCache(CACHE_BYTES))
        print(
            f"[cold_start] {name}: {version}, block {cfg.encoder.block_tokens} tokens, spans of {pipes[AFTER].encoder.span} blocks",
            flush=True,
        )
        rows += measure_config(cfg, pipes, counters, a.lengths, a.repeats, a.seed)
    print_table(rows)
    a.out.mkdir(parents=True, exist_ok=True)
    write_json(
        a.out / "cold_start.json",
        {
            "machine": machine(),
            "versions": versions(),
            "created": now_iso(),
            "command": "python -m bench.cold_start " + " ".join(argv if argv is not None else sys.argv[1:]),
            "sources": sources,
            "method": "in-process ServingPipeline on the published ONNX graphs, 1 onnxruntime thread, exact ANN, encoder cache on; "
            f"paths interleaved per repeat: {PATHS} (ServingConfig.encoder_blocks_per_call); returning = state of L-{NEW_EVENTS} events + {NEW_EVENTS} new",
            "rows": rows,
        },
    )
    plot(a.out / "cold_start.png", rows)
    print(f"[cold_start] wrote {a.out}/cold_start.json and cold_start.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
