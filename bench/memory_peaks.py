"""Peak resident memory of ``genrec-train`` and ``genrec-evaluate`` on default and heavy-user data.

    python -m bench.memory_peaks                    # `small`, default data and 4 heavy users (~1 h on 2 cores)
    python -m bench.memory_peaks --config tiny      # quick

Each command runs as its own subprocess; its peak resident size is what the kernel reports for
it (``os.wait4``'s ``ru_maxrss``: the largest of the process and its waited-for children). The
heavy-user data set is the default one with ``data.heavy_users`` users of 3,000-4,096 events
(``GENREC_DATA__HEAVY_USERS``). Evaluation runs with ``--exclude-seen``; its quality table is
written beside the figures (``--quality-dir``). Writes ``bench/results/memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from genrec.artifacts import machine, now_iso, versions, write_json


def peak_rss(cmd: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> dict[str, float | int]:
    """Run ``cmd``; its exit code, peak resident size (MiB) and wall seconds."""
    t0 = time.perf_counter()
    out = open(log, "ab") if log else None  # noqa: SIM115 - closed below, after the wait
    try:
        proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT if out else None)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if out:
            out.close()
    return {"returncode": proc.returncode, "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "seconds": round(time.perf_counter() - t0, 1)}


def train_and_evaluate(
    config: str, artifacts: Path, env: dict[str, str], quality_out: Path, log: Path | None = None, max_users: int | None = None
) -> dict:
    """``genrec-train`` then ``genrec-evaluate`` on its run, both with ``--exclude-seen``, each measured."""
    py = sys.executable
    train = peak_rss([py, "-m", "genrec.train", "--config", config, "--artifacts", str(artifacts), "--exclude-seen"], env, log)
    if train["returncode"] != 0:
        return {"train": train}
    cmd = [py, "-m", "genrec.evaluate", "--config", config, "--artifacts", str(artifacts), "--exclude-seen", "--out", str(quality_out)]
    evaluate = peak_rss(cmd + (["--max-users", str(max_users)] if max_users else []), env, log)
    return {"train": train, "evaluate": evaluate}


# Fewer epochs and users: every batch shape (training, validation, ranker fit, evaluation) is
# unchanged, and the heavy users are the first ones, so evaluating the first QUICK_USERS keeps them.
QUICK = {
    "GENREC_TRAIN__EPOCHS": "1",
    "GENREC_TRAIN__SASREC_EPOCHS": "1",
    "GENREC_SEMANTIC_ID__EPOCHS": "10",
    "GENREC_TRAIN__RANKER_USERS": "500",
}
QUICK_USERS = 500


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.memory_peaks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default="small")
    p.add_argument("--heavy-users", type=int, default=4, help="users with 3,000-4,096 events in the heavy-user data set")
    p.add_argument("--data", choices=("default", "heavy", "both"), default="both")
    p.add_argument("--artifacts", type=Path, default=Path("build/memory_peaks/runs"))
    p.add_argument("--quality-dir", type=Path, default=Path("build/memory_peaks"), help="where each evaluation's quality table goes")
    p.add_argument("--out", type=Path, default=Path("bench/results/memory.json"))
    p.add_argument(
        "--quick",
        action="store_true",
        help="one epoch per model (RQ-VAE 10), 500 ranker users, the first 500 users evaluated (the heavy ones among them): "
        "the batches, and so the peaks, are those of a full run; the quality is not",
    )
    a = p.parse_args(argv)
    a.quality_dir.mkdir(parents=True, exist_ok=True)
    quick = QUICK if a.quick else {}
    sets = {"default": {**quick}, "heavy": {**quick, "GENREC_DATA__HEAVY_USERS": str(a.heavy_users)}}
    chosen = list(sets) if a.data == "both" else [a.data]
    measured = {}
    for name in chosen:
        print(f"[memory] {a.config} on {name} data: genrec-train, then genrec-evaluate --exclude-seen", flush=True)
        quality = a.quality_dir / f"quality_{a.config}_{name}.json"
        log = a.quality_dir / f"{a.config}_{name}.log"
        r = train_and_evaluate(a.config, a.artifacts / name, sets[name], quality, log, QUICK_USERS if a.quick else None)
        if quality.exists():
            q = json.loads(quality.read_text())
            r["history_events"] = q["history_events"]
            r["dataset"] = q["dataset"]
        quick = {"quick": True, "evaluated_users": QUICK_USERS} if a.quick else {"quick": False}
        measured[f"{a.config}/{name}"] = {**r, **quick, "env": sets[name], "created": now_iso()}
        print(
            f"[memory] {a.config}/{name}: "
            + ", ".join(
                f"{k} {v['peak_rss_mib']} MiB in {v['seconds']} s" for k, v in r.items() if isinstance(v, dict) and "peak_rss_mib" in v
            ),
            flush=True,
        )
    # read just before writing: two invocations (one per data set) may run side by side
    result = json.loads(a.out.read_text()) if a.out.exists() else {}
    result["runs"] = {**result.get("runs", {}), **measured}
    result.update({"method": "os.wait4 ru_maxrss of each command's subprocess", "versions": versions(), "machine": machine()})
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out, result)
    print(f"[memory] wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
