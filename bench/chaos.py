"""The chaos run: faults injected one after another into a stack under steady load.

    python -m bench.chaos                       # tiny run, every fault, ~8 min; writes bench/results/faults.json/.png
    python -m bench.chaos --faults stub_kill,milvus_kill --window-s 20 --out build/faults.json   # a part
    python -m bench.chaos --config small --rate 20                                               # the small stack

It starts a stack of its own (``genrec-stack up`` on free ports: the Triton launcher with its
watchdog, redis-server with its append-only file, the BentoML feed service), then runs:
- **locust** (``loadtest/locustfile.py``) at a fixed arrival rate: ``FeedUser`` (feed pages with
  cursors, events, item pages) and ``RecommendUser`` (Triton's ``recommend`` over gRPC, no
  retries), every request logged (``--request-log``);
- a **ledger writer** (``loadtest/ledger.py``) on users of its own: pages, then keyed event
  batches with clicks on organic items and ads, resent with the same key until acknowledged.

After ``--window-s`` of steady load it injects each fault, waits ``--window-s``, and goes on:

| fault | how |
|---|---|
| ``stub_kill`` | SIGKILL to the ``recommend`` stub process (what the OOM killer does) |
| ``triton_restart`` | SIGTERM to the Triton launcher's process group, then ``genrec-stack up`` starts it again |
| ``redis_restart`` | SIGKILL to redis-server (a crash: no shutdown save), then ``genrec-stack up`` starts it on its AOF |
| ``milvus_kill`` | SIGKILL to the milvus-lite server process of the ``recommend`` instance |
| ``publish`` | ``genrec-publish`` of the same run into the running server: a new version of every model |
| ``rollback`` | ``genrec-rollback --model recommend``: back to the version before |

At the end every acknowledged batch is sent again (must be a replay) and the ledger is checked
against Redis (``acked_lost``, ``applied_twice``). Figures per fault: ``loadtest/chaos.py``.
Writes ``--out`` (a list ``faults``) and a timeline plot next to it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from genrec.artifacts import latest_run, machine, now_iso, versions, write_json
from genrec.runtime.stack import Stack, State
from loadtest.chaos import FEED, InjectedFault, fault_figures, p50, p99, timeline, writes_in
from loadtest.ledger import LedgerWriter, batch_applications, verify
from loadtest.request_log import read

FAULTS = ("stub_kill", "triton_restart", "redis_restart", "milvus_kill", "publish", "rollback")
BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GOAL_STUB_RECOVERY_S = 10.0
GOAL_PUBLISH_P99_RATIO = 1.5


def say(msg: str) -> None:
    print(f"[chaos] {msg}", flush=True)


@dataclass
class Target:
    stack: Stack
    st: State
    config: str
    run: Path

    def up(self) -> None:
        """``genrec-stack up`` again: starts what is not running, reuses the rest."""
        cmd = [str(BIN / "genrec-stack"), "up", "--state-dir", str(self.stack.dir), "--config", self.config, "--run", str(self.run)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


# ---- the faults ---------------------------------------------------------------------------


def _children(pid: int) -> list[tuple[int, str]]:
    from genrec.runtime.watchdog import child_processes

    return [(child, " ".join(argv)) for child, argv in child_processes(pid)]


def _tritonserver_pid(t: Target) -> int:
    launcher = t.stack.pid("triton")
    if launcher is None:
        raise RuntimeError("the Triton launcher is not running")
    for pid, cmd in _children(launcher):
        if "tritonserver" in cmd.split(" ")[0]:
            return pid
    raise RuntimeError("no tritonserver under the launcher")


def _recommend_stub(t: Target) -> int:
    from genrec.runtime.watchdog import find_stubs

    stubs = [s for s in find_stubs(_tritonserver_pid(t)) if s.model == "recommend" and s.alive]
    if not stubs:
        raise RuntimeError("no live recommend stub")
    return max(stubs, key=lambda s: int(s.version)).pid


def stub_kill(t: Target) -> str:
    pid = _recommend_stub(t)
    os.kill(pid, signal.SIGKILL)
    return f"SIGKILL recommend stub pid {pid}"


def triton_restart(t: Target) -> str:
    pid = t.stack.pid("triton")
    assert pid is not None
    os.killpg(pid, signal.SIGTERM)
    t0 = time.monotonic()
    while t.stack.pid("triton") is not None and time.monotonic() - t0 < 30:
        time.sleep(0.2)
    stopped = time.monotonic() - t0
    t.up()
    return f"SIGTERM launcher pid {pid}: stopped in {stopped:.1f} s, up again in {time.monotonic() - t0:.1f} s"


def redis_restart(t: Target) -> str:
    pid = t.stack.pid("redis")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    time.sleep(2.0)  # an outage the feed must ride out
    t0 = time.monotonic()
    t.up()
    return f"SIGKILL redis-server pid {pid}, 2 s down, up again (AOF replayed) in {time.monotonic() - t0:.1f} s"


def _milvus_lite(stub: int) -> list[int]:
    return [pid for pid, cmd in _children(stub) if "milvus_lite" in cmd]


def milvus_kill(t: Target) -> str:
    stub = _recommend_stub(t)
    lite = _milvus_lite(stub)
    if not lite:
        raise RuntimeError("no milvus-lite process under the recommend stub (GENREC_SERVING__MILVUS_URI set?)")
    for pid in lite:
        os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 30:  # the index is rebuilt (a new milvus-lite server) in the background
        fresh = [p for p in _milvus_lite(stub) if p not in lite]
        if fresh:
            return (
                f"SIGKILL milvus-lite pid {', '.join(map(str, lite))}; a new one (pid {fresh[0]}) runs {time.monotonic() - t0:.1f} s later"
            )
        time.sleep(0.2)
    return f"SIGKILL milvus-lite pid {', '.join(map(str, lite))}; no new one within 30 s"


def triton_counters(t: Target) -> dict[str, float]:
    """Triton-side counters a fault moves: searches served without ANN, failed inferences of recommend."""
    import urllib.request

    try:
        text = urllib.request.urlopen(t.st.triton_metrics, timeout=2).read().decode()
    except OSError:
        return {}
    out = {"ann_unavailable": 0.0, "recommend_failures": 0.0}
    for line in text.splitlines():
        if line.startswith("genrec_ann_unavailable_total"):
            out["ann_unavailable"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("nv_inference_request_failure") and 'model="recommend"' in line:
            out["recommend_failures"] += float(line.rsplit(" ", 1)[1])
    return out


def publish(t: Target) -> str:
    cmd = [
        str(BIN / "genrec-publish"),
        "--run",
        str(t.run),
        "--repository",
        t.st.repository,
        "--triton-url",
        t.st.triton_http,
        "--no-summary",
    ]
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return f"published {t.run.name} again: {time.monotonic() - t0:.1f} s"


def rollback(t: Target) -> str:
    cmd = [str(BIN / "genrec-rollback"), "--model", "recommend", "--repository", t.st.repository, "--triton-url", t.st.triton_http]
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return f"rolled recommend back: {time.monotonic() - t0:.1f} s"


INJECT: dict[str, Callable[[Target], str]] = {
    "stub_kill": stub_kill,
    "triton_restart": triton_restart,
    "redis_restart": redis_restart,
    "milvus_kill": milvus_kill,
    "publish": publish,
    "rollback": rollback,
}


# ---- load ---------------------------------------------------------------------------------


def start_locust(t: Target, workload: Path, out: Path, rate: float, users: int, duration_s: int, timeout_s: float) -> subprocess.Popen:
    cmd = [str(BIN / "locust"), "-f", str(REPO / "loadtest" / "locustfile.py"), "--headless", "--only-summary"]
    cmd += ["-u", str(users), "-r", str(users), "-t", f"{duration_s}s", "--stop-timeout", "5", "--host", t.st.feed_url]
    cmd += ["--workload", str(workload), "--triton-grpc", t.st.triton_grpc, "--rate", str(rate), "--request-timeout", str(timeout_s)]
    cmd += ["--request-log", str(out / "requests.jsonl"), "--summary-json", str(out / "summary.json"), "--max-fail-ratio", "1"]
    cmd += ["FeedUser", "RecommendUser"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=open(out / "locust.log", "w"), stderr=subprocess.STDOUT)


class WriterThread:
    def __init__(self, writer: LedgerWriter) -> None:
        self.writer = writer
        self.loop = asyncio.new_event_loop()
        self.stop_event: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._main, name="ledger-writer", daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.stop_event = asyncio.Event()
        self.loop.run_until_complete(self.writer.run(self.stop_event))

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        if self.stop_event is not None:
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(timeout=self.writer.give_up_s + 10)


# ---- the run ------------------------------------------------------------------------------


def chaos(t: Target, faults: list[str], window_s: float, rate: float, writer_users: int, out_dir: Path, timeout_s: float) -> dict:
    from loadtest.workload import build

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "requests.jsonl").unlink(missing_ok=True)
    workload = build(t.run, out_dir / "workload.json", max_users=10**9)
    writers = reserve_users(workload, writer_users)
    duration = int(window_s * (len(faults) + 1) + 600)  # stopped early; long enough for slow restarts
    users = max(2, int(rate))
    say(f"load: locust {users} users at {rate:g} tasks/s (FeedUser + RecommendUser), ledger writer on {', '.join(writers)}")
    proc = start_locust(t, workload, out_dir, rate, users, duration, timeout_s)
    writer = WriterThread(LedgerWriter(t.st.feed_url, writers, timeout_s=timeout_s))
    writer.start()
    injected: list[InjectedFault] = []
    counters: list[dict[str, float]] = []  # Triton's counters before each fault and at the end
    start = time.time()
    try:
        time.sleep(window_s)
        for name in faults:
            counters.append(triton_counters(t))
            at = time.time()
            say(f"inject {name}")
            try:
                detail = INJECT[name](t)
            except Exception as e:  # a fault that could not be injected is reported, the run goes on
                detail = f"injection failed: {type(e).__name__}: {e}"
            injected.append(InjectedFault(name, at, time.time(), detail))
            say(f"  {detail}")
            time.sleep(window_s)
        counters.append(triton_counters(t))
    finally:
        end = time.time()
        writer.stop()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    say("checking acknowledged writes against Redis (every acknowledged batch is sent again first: a replay must change nothing)")
    ledger = writer.writer.ledger
    verdict = verify(ledger, t.st.redis_url)  # before the replay, which would re-apply a lost batch
    before = batch_applications(ledger, t.st.redis_url)
    replay_failed = asyncio.run(writer.writer.replay_all())
    changed = sum(a != b for a, b in zip(before, batch_applications(ledger, t.st.redis_url), strict=True))
    verdict = dataclasses.replace(verdict, replays_changed=replay_failed + changed)
    requests = list(read(out_dir / "requests.jsonl"))
    rows = []
    for i, f in enumerate(injected):
        window_end = injected[i + 1].at if i + 1 < len(injected) else end
        fig = fault_figures(requests, f, window_end, before_s=window_s, after_s=window_s)
        lo = f.at - window_s  # the writes acknowledged just before the fault are the ones it could take
        fig["acked_writes"] = writes_in([b.acked_at for b in writer.writer.ledger.batches], lo, window_end)
        fig["acked_lost"] = writes_in(verdict.lost + verdict.charges_lost + verdict.caps_lost, lo, window_end)
        fig["applied_twice"] = writes_in(verdict.doubled, lo, window_end)
        if i + 1 < len(counters):  # a restarted Triton starts its counters at 0: no difference then
            a, b = counters[i], counters[i + 1]
            fig["triton_counters"] = {k: b[k] - a[k] for k in a if k in b and b[k] >= a[k]}
        rows.append(fig)
    tl = timeline(requests, start, end)
    # steady state: every feed answer outside the faults' disturbed spans (injection to recovery,
    # and a publish's "after" minute, which is what gets compared with it), after a 15 s ramp in
    # which the first visits of the users are cold encodes
    disturbed = []
    for f, row in zip(injected, rows, strict=True):
        rec = row["recovery_s"] if row["recovery_s"] is not None else window_s
        until = max(f.at + float(rec), f.done_at) + (window_s if f.fault == "publish" else 0.0)  # type: ignore[arg-type]
        disturbed.append((f.at, until))
    steady = [r.ms for r in requests if r.name == FEED and r.t >= start + 15.0 and not any(a <= r.t < b for a, b in disturbed)]
    return {
        # the one baseline every fault is held against: a fault's own "before" may be the tail of
        # the previous fault's window, and the first window alone holds too few answers for a p99
        "steady": {"p50_ms": p50(steady), "p99_ms": p99(steady), "requests": len(steady)},
        "faults": rows,
        "ledger": {
            **verdict.as_dict(),
            "unanswered_attempts": writer.writer.ledger.unanswered,
            "refused": writer.writer.ledger.refused[:10],
        },
        "timeline": {
            "start": start,
            "t": tl.t.tolist(),
            "rps": tl.rps.tolist(),
            "errors": tl.errors.tolist(),
            "fallbacks": tl.fallbacks.tolist(),
            "p99_ms": [None if x != x else round(float(x), 1) for x in tl.p99_ms],
            "faults": [{"fault": f.fault, "t": round(f.at - start, 2), "done_t": round(f.done_at - start, 2)} for f in injected],
        },
    }


def reserve_users(workload: Path, n: int) -> list[str]:
    """Take ``n`` users (seeded ones, with histories) out of the workload for the ledger writer,
    so nobody else writes to them and their histories can be checked exactly."""
    data = json.loads(workload.read_text())
    users = sorted(data["users"], key=lambda u: int(u["user_id"].lstrip("u")))
    if len(users) <= n:
        raise ValueError(f"{workload}: {len(users)} users, {n} wanted for the writer")
    taken = {u["user_id"] for u in users[-n:]}
    data["users"] = [u for u in data["users"] if u["user_id"] not in taken]
    workload.write_text(json.dumps(data))
    return sorted(taken)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl = result["timeline"]
    fig, (a, b) = plt.subplots(2, 1, figsize=(12, 6.5), sharex=True)
    a.plot(tl["t"], tl["rps"], label="requests/s", color="tab:blue")
    a.plot(tl["t"], tl["errors"], label="errors/s", color="tab:red")
    a.plot(tl["t"], tl["fallbacks"], label="fallback answers/s", color="tab:orange")
    a.set_ylabel("per second")
    a.legend(loc="upper right", fontsize=8)
    b.plot(tl["t"], [float("nan") if x is None else x for x in tl["p99_ms"]], color="tab:purple", label="/v1/feed p99 (5 s window)")
    b.set_yscale("log")
    b.set_ylabel("ms")
    b.set_xlabel("seconds since the load started")
    b.legend(loc="upper right", fontsize=8)
    for f in tl["faults"]:
        for ax in (a, b):
            ax.axvspan(f["t"], max(f["done_t"], f["t"] + 0.5), color="grey", alpha=0.25)
        a.annotate(f["fault"], (f["t"], a.get_ylim()[1]), rotation=90, va="top", ha="right", fontsize=8)
    fig.suptitle("Chaos run: faults injected under steady load (grey: injection)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(rows: list[dict]) -> str:
    head = f"{'fault':<15} {'requests':>8} {'failed':>6} {'fallbk':>6} {'recov s':>7} {'p99 bef':>8} {'p99 dur':>8} {'p99 aft':>8} {'slowest':>8} {'lost':>4} {'twice':>5}"
    lines = [head]
    for r in rows:
        rec = "-" if r["recovery_s"] is None else f"{r['recovery_s']:.1f}"
        f = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
        lines.append(
            f"{r['fault']:<15} {r['requests']:>8} {r['failed']:>6} {r['fallbacks']:>6} {rec:>7} {f(r['p99_before_ms']):>8} "
            f"{f(r['p99_during_ms']):>8} {f(r['p99_after_ms']):>8} {f(r['slowest_ms']):>8} {r['acked_lost']:>4} {r['applied_twice']:>5}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", choices=("tiny", "small"))
    p.add_argument("--run", type=Path, default=None, help="trained run (default: the config's latest)")
    p.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, in order (default all: {','.join(FAULTS)})")
    p.add_argument("--window-s", type=float, default=45.0, help="steady load before the first fault and after each")
    p.add_argument("--rate", type=float, default=10.0, help="locust tasks/s (feed pages, events, item pages, recommend calls)")
    p.add_argument("--writer-users", type=int, default=4, help="users the ledger writer keeps for itself")
    p.add_argument("--timeout-s", type=float, default=5.0, help="client deadline per request (locust and the writer)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "faults.json")
    p.add_argument("--work-dir", type=Path, default=None, help="request log, locust output (default: a temp folder)")
    p.add_argument("--keep-stack", action="store_true", help="leave the stack running (its state folder is printed)")
    a = p.parse_args(argv)
    faults = [f for f in a.faults.split(",") if f]
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        p.error(f"unknown faults {unknown}; choose from {', '.join(FAULTS)}")
    run = (a.run or latest_run(name=a.config)).resolve()
    state = Path(tempfile.mkdtemp(prefix="genrec-chaos-"))
    work = a.work_dir or state / "work"
    stack = Stack(state)
    say(f"starting a stack of its own ({run.name}, free ports), state in {state}")
    st = stack.up(a.config, run, None, {}, True, None, 600)
    try:
        result = chaos(Target(stack, st, a.config, run), faults, a.window_s, a.rate, a.writer_users, work, a.timeout_s)
    finally:
        if not a.keep_stack:
            stack.down()
    rows = result["faults"]
    stub = next((r for r in rows if r["fault"] == "stub_kill"), None)
    pub = next((r for r in rows if r["fault"] == "publish"), None)
    result.update(
        {
            "created": now_iso(),
            "config": a.config,
            "run": str(run.relative_to(REPO)) if run.is_relative_to(REPO) else str(run),
            "rate": a.rate,
            "window_s": a.window_s,
            "timeout_s": a.timeout_s,
            "load_average": os.getloadavg(),
            "machine": machine(),
            "versions": versions(),
            "goals": {
                "all_recovered": all(r["recovery_s"] is not None for r in rows),
                "stub_recovery_under_10s": None
                if stub is None or stub["recovery_s"] is None
                else stub["recovery_s"] < GOAL_STUB_RECOVERY_S,
                "no_wait_past_deadline": all(r["slowest_ms"] <= a.timeout_s * 1000 for r in rows),
                "no_acked_write_lost_or_doubled": all(r["acked_lost"] == 0 and r["applied_twice"] == 0 for r in rows)
                and result["ledger"]["lost"] == 0
                and result["ledger"]["doubled"] == 0
                and result["ledger"]["replays_changed"] == 0,
                "publish_p99_within_1_5x_of_steady": None
                if pub is None or not result["steady"]["p99_ms"] or not pub["p99_after_ms"]
                else pub["p99_after_ms"] <= GOAL_PUBLISH_P99_RATIO * result["steady"]["p99_ms"],
            },
        }
    )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out, result)
    plot(result, a.out.with_suffix(".png"))
    print(table(rows))
    say(f"ledger: {result['ledger']}")
    say(f"goals: {result['goals']}")
    say(f"wrote {a.out} and {a.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
