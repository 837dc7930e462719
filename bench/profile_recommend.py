"""Where a ``recommend`` request's time goes inside Triton, and the metrics fix, side by side.

    python -m bench.profile_recommend                 # the latest tiny run, ~6 min
    python -m bench.profile_recommend --rates 5 20 --window-s 5 --profile-s 10   # quicker

For each way of sending the model's custom metrics (``inline``: every update a synchronous
round trip from the Python backend's stub to the server, on the request path, as before;
``background``: buffered and sent by a thread every ``serving.metrics_flush_s``, the default
now), one after the other on the same published run:

1. a Triton server on free ports (one ``recommend`` instance, as shipped), every workload user
   visited once (their encoder states cached);
2. an open-loop sweep (bench/open_loop.py's generator, constant arrivals, latency from the due
   time) at ``--rates``: p50/p99 per rate and Triton's own timers. The issue's question: is a quiet
   server (5 req/s) slower per request than a busy one?
3. a sampling profile of the ``recommend`` stub process (py-spy, ``--rate`` samples/s, active
   threads only) while ``--profile-rate`` requests/s arrive: the share of samples per category
   (model graphs in onnxruntime, ANN search over gRPC to milvus-lite, custom metrics, the Triton
   adapter's tensor glue, the pipeline's own Python/numpy by module) and the top frames by self
   time; which of them are not model compute.

Writes bench/results/profile_recommend.json and .png (p50 against rate for both modes; the
profile's category shares). py-spy comes from requirements.txt.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.open_loop import OpenLoop, RecommendTarget, load_workload, say, sweep
from genrec.artifacts import latest_run, machine, now_iso, versions, write_json

MODES = {"inline": 0.0, "background": 1.0}  # serving.metrics_flush_s of each
MODEL_COMPUTE = "model graphs (onnxruntime)"
METRICS_THREAD = "genrec-metrics-flush"  # MetricsFlusher's thread name
# (category, pattern on a frame "Class.function (file:line)"); the first rule matching a
# sample's frames from the leaf up names it, so time inside a graph run called from the pipeline
# counts as the graph's, not the pipeline's
RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    (MODEL_COMPUTE, re.compile(r"onnxruntime_inference_collection\.py")),
    ("custom metrics on the request path", re.compile(r"serving_metrics\.py")),
    ("ANN search (milvus-lite over gRPC)", re.compile(r"pymilvus|grpc|milvus_index\.py")),
    ("encoder state store", re.compile(r"(encoder_state|state_store|encoder_cache)\.py")),
    ("beam search and trie (numpy)", re.compile(r"(beam_search|prefix_trie|onnx_decoder)\.py")),
    ("cascade, features, ranker glue (numpy)", re.compile(r"(cascade|ranking_features|retrieval|catalogue)\.py")),
    ("pipeline orchestration", re.compile(r"serving_pipeline\.py")),
    ("request parsing and validation", re.compile(r"request_validation\.py")),
    ("Triton adapter (pb_utils tensors, responses)", re.compile(r"model\.py")),
)
BACKGROUND_METRICS = "custom metrics, background thread"
STUB_NATIVE = "stub's native loop (IPC, shared-memory tensors)"  # no Python frame under the thread
OTHER = "other Python"


@dataclass(frozen=True)
class Sample:
    frames: tuple[str, ...]  # root first, as py-spy writes them
    count: int


def parse_collapsed(text: str) -> list[Sample]:
    """py-spy's ``--format raw`` output: one ``frame;frame;...;leaf COUNT`` line per stack."""
    out = []
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if stack and count.isdigit():
            out.append(Sample(tuple(stack.split(";")), int(count)))
    return out


def category(frames: Sequence[str]) -> str:
    python = [f for f in frames if not f.startswith("thread (")]  # --threads puts "thread (tid): name" first
    if any(f.startswith("thread (") and f.endswith(METRICS_THREAD) for f in frames):
        return BACKGROUND_METRICS
    if not python:
        return STUB_NATIVE
    for frame in reversed(python):  # leaf first
        for name, pattern in RULES:
            if pattern.search(frame):
                return name
    return OTHER


def summarize(samples: Iterable[Sample], top: int = 15) -> dict[str, Any]:
    """Share of samples per category and the top leaf frames by self time (shares of all samples)."""
    by_cat: Counter[str] = Counter()
    by_leaf: Counter[str] = Counter()
    leaf_cats: dict[str, Counter[str]] = {}
    total = 0
    for s in samples:
        total += s.count
        cat = category(s.frames)
        by_cat[cat] += s.count
        leaf = re.sub(r":\d+\)$", ")", s.frames[-1])  # the lines of one function together
        by_leaf[leaf] += s.count
        leaf_cats.setdefault(leaf, Counter())[cat] += s.count
    if total == 0:
        return {"samples": 0, "categories": {}, "top_frames": [], "not_model_compute": None}
    cats = {k: round(v / total, 4) for k, v in by_cat.most_common()}
    return {
        "samples": total,
        "categories": cats,
        "top_frames": [
            {"frame": f, "share": round(n / total, 4), "category": leaf_cats[f].most_common(1)[0][0]} for f, n in by_leaf.most_common(top)
        ],
        "not_model_compute": round(1.0 - cats.get(MODEL_COMPUTE, 0.0), 4),
    }


def py_spy() -> str:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        raise RuntimeError("py-spy not found: it is in requirements.txt (bash scripts/setup.sh installs it)")
    return exe


def profile(pid: int, seconds: float, rate_hz: int, out: Path) -> list[Sample]:
    """Sample ``pid`` for ``seconds`` (py-spy record, active threads, without pausing it)."""
    cmd = [py_spy(), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate_hz)]
    cmd += ["--format", "raw", "--nonblocking", "--threads", "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return parse_collapsed(out.read_text())


def recommend_stub(server_pid: int) -> int:
    from genrec.runtime.watchdog import find_stubs

    stubs = [s for s in find_stubs(server_pid) if s.model == "recommend" and s.alive]
    if not stubs:
        raise RuntimeError("no live recommend stub under the server")
    return stubs[0].pid


def measure_mode(mode: str, repo: Path, state: Path, work: Any, a: argparse.Namespace) -> dict[str, Any]:
    from bench.recommend_latency import start

    server = start(repo, state, GENREC_SERVING__METRICS_FLUSH_S=str(MODES[mode]))
    metrics_url = server.metrics_url
    gen = OpenLoop(lambda: RecommendTarget(server.grpc_url), work)
    try:
        gen.closed(len(work.users), 2)  # every user once: states cached, graphs warm
        rows = sweep(gen, a.rates, a.window_s, a.arrivals, metrics_url, mode)
        stub = recommend_stub(server.proc.pid if server.proc else 0)
        raw = state / f"profile-{mode}.txt"
        box: dict[str, Any] = {}

        def sample() -> None:
            try:
                box["samples"] = profile(stub, a.profile_s, a.sample_hz, raw)
            except Exception as e:  # reported in the results, the sweep's figures still count
                box["error"] = str(e)

        t = threading.Thread(target=sample)
        t.start()
        load = gen.window(a.profile_rate, a.profile_s, arrivals=a.arrivals)
        t.join()
        prof = summarize(box.get("samples", []), a.top)
        prof.update({"rate_rps": a.profile_rate, "seconds": a.profile_s, "sample_hz": a.sample_hz, "load": load})
        if "error" in box:
            prof["error"] = box["error"]
        if a.keep_raw:
            shutil.copy(raw, a.out.with_name(f"profile_recommend_{mode}.txt"))
    finally:
        gen.close()
        server.stop()
    return {"metrics_flush_s": MODES[mode], "sweep": rows, "profile": prof}


def quiet_vs_busy(rows: Sequence[dict[str, Any]]) -> float | None:
    """p50 at the lowest rate over p50 at the busiest rate that still held (1.0: a quiet server is
    as fast per request as a busy one)."""
    held = [r for r in rows if r["ok"] and r["error_ratio"] == 0]
    if len(held) < 2:
        return None
    quiet, busy = min(held, key=lambda r: r["offered_rps"]), max(held, key=lambda r: r["offered_rps"])
    return round(quiet["latency_ms"]["p50"] / busy["latency_ms"]["p50"], 3)


def cell(row: dict[str, Any]) -> str:
    lat, tri = row["latency_ms"], row.get("triton_ms") or {}
    return f"{lat['p50']:.1f} / {lat['p99']:.1f} / {tri.get('request_ms', float('nan')):.1f}"


def plot(path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m in MODES if m in result["modes"]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1, 1.3]})
    for m in modes:
        rows = result["modes"][m]["sweep"]
        x = [r["offered_rps"] for r in rows]
        ax1.plot(x, [r["latency_ms"]["p50"] for r in rows], marker="o", label=f"{m}: p50")
        ax1.plot(
            x,
            [(r.get("triton_ms") or {}).get("request_ms", float("nan")) for r in rows],
            ls="--",
            marker=".",
            label=f"{m}: Triton request time",
        )
    ax1.set_xlabel("offered rate (req/s)")
    ax1.set_ylabel("ms")
    ax1.set_title("recommend per request: metrics inline vs background")
    ax1.legend(fontsize=8)
    cats = list(dict.fromkeys(c for m in modes for c in result["modes"][m]["profile"]["categories"]))
    width = 0.8 / max(1, len(modes))
    for i, m in enumerate(modes):
        shares = result["modes"][m]["profile"]["categories"]
        ax2.barh([k + i * width for k in range(len(cats))], [100 * shares.get(c, 0.0) for c in cats], height=width, label=m)
    ax2.set_yticks([k + width * (len(modes) - 1) / 2 for k in range(len(cats))], cats, fontsize=8)
    ax2.invert_yaxis()
    ax2.set_xlabel("% of the stub's active samples (py-spy)")
    ax2.set_title(f"recommend process profile at {result['profile_rate_rps']:.0f} req/s")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from bench.open_loop import ARRIVALS

    p = argparse.ArgumentParser(
        prog="python -m bench.profile_recommend", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default="tiny", help="config of the run (default tiny: the latest tiny run)")
    p.add_argument("--run", type=Path, default=None, help="trained run (default: the config's latest)")
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES), help="metrics modes to compare")
    p.add_argument("--rates", type=float, nargs="+", default=[5, 10, 20, 30], help="open-loop rates per mode (req/s)")
    p.add_argument("--window-s", type=float, default=15.0, help="measured seconds per rate (after 1 s not counted)")
    p.add_argument("--arrivals", choices=ARRIVALS, default="uniform")
    p.add_argument("--profile-rate", type=float, default=20.0, help="requests/s while py-spy samples")
    p.add_argument("--profile-s", type=float, default=20.0, help="seconds sampled")
    p.add_argument("--sample-hz", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=15, help="top frames kept")
    p.add_argument("--users", type=int, default=600, help="workload users (the run's first N, drawn Zipf)")
    p.add_argument("--keep-raw", action="store_true", help="also copy py-spy's collapsed stacks beside the JSON")
    p.add_argument("--out", type=Path, default=Path("bench/results/profile_recommend.json"))
    a = p.parse_args(argv)

    from genrec.exporters.publish import publish_run

    run = a.run or latest_run(name=a.config)
    result: dict[str, Any] = {
        "machine": machine(),
        "versions": versions(),
        "created": now_iso(),
        "run": str(run),
        "config": a.config,
        "rates": a.rates,
        "window_s": a.window_s,
        "profile_rate_rps": a.profile_rate,
        "load_average_before": list(os.getloadavg()),
        "modes": {},
    }
    with tempfile.TemporaryDirectory(prefix="genrec-profile-") as tmp_name:
        tmp = Path(tmp_name)
        repo = tmp / "model_repository"
        say(f"publishing {run} to {repo}")
        publish_run(run, repo, progress=lambda m: None)
        work = load_workload(run, a.users)
        for mode in a.modes:
            say(f"== {mode} metrics (serving.metrics_flush_s={MODES[mode]}); load average {os.getloadavg()[0]:.1f}")
            state = tmp / mode
            state.mkdir()
            r = measure_mode(mode, repo, state, work, a)
            r["quiet_over_busy_p50"] = quiet_vs_busy(r["sweep"])
            result["modes"][mode] = r
            prof = r["profile"]
            say(f"  profile: {prof['samples']} samples at {a.profile_rate:.0f} req/s; not model compute {prof['not_model_compute']}")
            for cat, share in prof["categories"].items():
                say(f"    {100 * share:5.1f}%  {cat}")
    result["load_average_after"] = list(os.getloadavg())
    modes = result["modes"]
    if {"inline", "background"} <= modes.keys():
        result["p50_ratio_background_over_inline"] = {
            str(a_["offered_rps"]): round(b_["latency_ms"]["p50"] / a_["latency_ms"]["p50"], 3)
            for a_, b_ in zip(modes["inline"]["sweep"], modes["background"]["sweep"])
            if a_["ok"] and b_["ok"]
        }
    say("req/s  " + "  ".join(f"{m + ' p50 / p99 / Triton request ms':>44}" for m in modes))
    for i, rate in enumerate(a.rates):
        say(f"{rate:>5.0f}  " + "  ".join(f"{cell(modes[m]['sweep'][i]):>44}" for m in modes))
    for m in modes:
        say(f"{m}: p50 at the lowest rate / at the busiest held rate = {modes[m]['quiet_over_busy_p50']}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out, result)
    plot(a.out.with_suffix(".png"), result)
    say(f"wrote {a.out} and {a.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
