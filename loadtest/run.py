"""The headless load test with a gate: ``python -m loadtest`` (run from the repository root).

    python -m loadtest run --target recommend --rate 8 --duration 30s --stack-dir build/stack
    python -m loadtest run --target feed --rate 10 --duration 1m --feed-url http://localhost:3000 --run artifacts/runs/small-001
    python -m loadtest run --target both --shape spike --rate 5 --duration 90s --processes 2 ...
    python -m loadtest prepare --run artifacts/runs/small-001 --out build/loadtest/workload.json

``run`` builds the workload from the run (unless ``--workload`` is given), starts
``locust -f loadtest/locustfile.py --headless`` with ``--csv``, ``--html`` and the gate's JSON
summary under ``--out``, prints the gate and exits with locust's code: 0 when P99 and the
failure ratio are within the thresholds, 1 when not, or when the generator itself was
CPU-bound (then the P99 is the generator's, not the service's). Addresses come from the
options, else from a ``genrec-stack`` state folder (``--stack-dir``), else the default ports.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from loadtest import gate

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
USER_CLASSES = {"recommend": ["RecommendUser"], "feed": ["FeedUser"], "both": ["RecommendUser", "FeedUser"]}
PER_USER_RATE = 2.0  # tasks/s per simulated user when --users is not given


def stack_addresses(state_dir: Path) -> dict[str, str]:
    """Triton gRPC, feed URL and run of a ``genrec-stack up`` (its stack.json)."""
    st = json.loads((state_dir / "stack.json").read_text())
    ports, external = st.get("ports", {}), st.get("external", {})
    return {
        "triton_grpc": external.get("triton_grpc") or f"127.0.0.1:{ports['triton_grpc']}",
        "feed_url": f"http://127.0.0.1:{ports['feed']}",
        "run": st.get("run", ""),
    }


def locust_command(args: argparse.Namespace, workload: Path, out: Path, users: int) -> list[str]:
    cmd = [
        str(Path(sys.executable).parent / "locust"),
        "-f",
        str(HERE / "locustfile.py"),
        "--headless",
        "--only-summary",
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        args.duration,
        "--stop-timeout",
        "5",
        "--host",
        args.feed_url,
        "--csv",
        str(out / "locust"),
        "--html",
        str(out / "report.html"),
        "--summary-json",
        str(out / "summary.json"),
        "--workload",
        str(workload),
        "--triton-grpc",
        args.triton_grpc,
        "--rate",
        str(args.rate),
        "--shape",
        args.shape,
        "--steps",
        str(args.steps),
        "--spike-factor",
        str(args.spike_factor),
        "--request-timeout",
        str(args.request_timeout),
        "--recommend-p99-ms",
        str(args.recommend_p99_ms),
        "--feed-p99-ms",
        str(args.feed_p99_ms),
        "--max-fail-ratio",
        str(args.max_fail_ratio),
        "--max-generator-cpu",
        str(args.max_generator_cpu),
        "--min-rate-ratio",
        str(args.min_rate_ratio),
    ]
    if args.processes:
        cmd += ["--processes", str(args.processes)]
    return cmd + list(args.locust_arg) + USER_CLASSES[args.target]


def run(args: argparse.Namespace) -> int:
    stack = stack_addresses(args.stack_dir) if args.stack_dir else {}
    args.triton_grpc = args.triton_grpc or stack.get("triton_grpc") or "localhost:8001"
    args.feed_url = args.feed_url or stack.get("feed_url") or "http://localhost:3000"
    out = args.out or REPO / "build" / "loadtest" / f"{time.strftime('%Y%m%d-%H%M%S')}-{args.target}"
    out.mkdir(parents=True, exist_ok=True)
    workload = args.workload
    if workload is None:
        run_dir = args.run or (Path(stack["run"]) if stack.get("run") else None)
        if run_dir is None:
            print("loadtest: give --workload, --run or --stack-dir (the users and histories come from a trained run)", file=sys.stderr)
            return 2
        from loadtest.workload import build

        print(f"[loadtest] building the workload from {run_dir}", flush=True)
        workload = build(run_dir, out / "workload.json", args.max_users)
    default_users = max(1, math.ceil(args.rate / PER_USER_RATE)) if args.rate > 0 else 10
    users = args.users or default_users
    cmd = locust_command(args, workload, out, users)
    print(f"[loadtest] {args.target}: {users} users, rate {args.rate:g}/s, {args.shape} for {args.duration} -> {out}", flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    code = subprocess.run(cmd, env=env, cwd=REPO).returncode
    summary = out / "summary.json"
    if summary.exists():
        s = json.loads(summary.read_text())
        print(f"[loadtest] {'PASSED' if s['passed'] else 'FAILED'}; summary {summary}, csv {out}/locust_stats.csv, html {out}/report.html")
    else:
        print(f"[loadtest] locust exited {code} without a summary (see its output above)", file=sys.stderr)
        code = code or 1
    return code


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="a headless run with the gate")
    r.add_argument("--target", choices=tuple(USER_CLASSES), default="recommend")
    r.add_argument(
        "--rate", type=float, default=5.0, help="requests/s of all users at the base count (default %(default)s; 0 = think times)"
    )
    r.add_argument("--duration", default="30s", help="locust run time, e.g. 30s, 2m (default %(default)s)")
    r.add_argument("--users", type=int, default=None, help=f"simulated users (default: rate / {PER_USER_RATE:g}, at least 1)")
    r.add_argument("--shape", choices=("constant", "step", "spike"), default="constant")
    r.add_argument("--steps", type=int, default=4)
    r.add_argument("--spike-factor", type=float, default=3.0)
    r.add_argument("--triton-grpc", default=None, help="Triton gRPC host:port")
    r.add_argument("--feed-url", default=None, help="feed service base URL")
    r.add_argument("--stack-dir", type=Path, default=None, help="a genrec-stack state folder: addresses and run from its stack.json")
    r.add_argument("--run", type=Path, default=None, help="trained run whose users and histories are sent")
    r.add_argument("--workload", type=Path, default=None, help="a workload JSON already built (python -m loadtest prepare)")
    r.add_argument("--max-users", type=int, default=2000, help="users taken from the run (default %(default)s)")
    r.add_argument("--out", type=Path, default=None, help="folder for csv, html, summary.json (default build/loadtest/<time>-<target>)")
    r.add_argument("--request-timeout", type=float, default=2.0)
    r.add_argument("--recommend-p99-ms", type=float, default=gate.DEFAULT_P99_MS["recommend"])
    r.add_argument("--feed-p99-ms", type=float, default=gate.DEFAULT_P99_MS["/v1/feed"])
    r.add_argument("--max-fail-ratio", type=float, default=gate.DEFAULT_MAX_FAIL_RATIO)
    r.add_argument("--max-generator-cpu", type=float, default=gate.DEFAULT_MAX_GENERATOR_CPU, help="share of one core per locust process")
    r.add_argument("--min-rate-ratio", type=float, default=gate.DEFAULT_MIN_RATE_RATIO, help="fail under this share of --rate")
    r.add_argument("--processes", type=int, default=0, help="locust worker processes (-1: one per core); 0: one process")
    r.add_argument("--locust-arg", action="append", default=[], help="extra argument passed to locust (repeatable)")
    p = sub.add_parser("prepare", help="write the workload JSON of a run")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--out", type=Path, default=REPO / "build" / "loadtest" / "workload.json")
    p.add_argument("--max-users", type=int, default=2000)
    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        from loadtest.workload import build

        path = build(args.run, args.out, args.max_users)
        print(f"[loadtest] wrote {path} ({len(json.loads(path.read_text())['users'])} users)")
        return 0
    return run(args)
