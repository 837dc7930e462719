"""``genrec-stack up`` / ``down`` on a `tiny` run: the real Triton, redis-server and BentoML feed
service, on free ports with a state folder of their own (so a developer's stack on 3000/800x is
left alone); readiness, one feed, a second `up` that reuses everything, then `down` stops exactly
those processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
pytest.importorskip("bentoml")
pytest.importorskip("tritonclient.grpc")
pytest.importorskip("pymilvus")

SERVICES = ("triton", "redis", "feed")


def _stack(state: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "TRITON_HTTP_URL", "TRITON_GRPC_URL", "GENREC_STACK_DIR")}
    cmd = [sys.executable, "-m", "genrec.runtime.stack", args[0], "--state-dir", str(state), *args[1:]]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"  # a zombie has finished


def _group(pgid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                out.append(int(p.name))
    return out


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_stack_up_feed_reuse_down(tiny_run, tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: scripts/setup.sh installs it with apt when run as root")
    state = tmp_path / "stack"
    up = _stack(state, "up", "--config", "tiny", "--run", str(tiny_run), "--free-ports", "--timeout", "240")
    pids: dict[str, int] = {}
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        assert "[stack] feed: ready" in up.stdout
        pids = {n: int((state / f"{n}.pid").read_text().split()[0]) for n in SERVICES}
        assert all(_alive(p) for p in pids.values())
        st = json.loads((state / "stack.json").read_text())
        feed = f"http://127.0.0.1:{st['ports']['feed']}"
        with urllib.request.urlopen(f"{feed}/readyz", timeout=10) as r:
            assert r.status == 200
        body = _post(f"{feed}/v1/feed", {"user_id": "u1", "count": 10})
        assert body["code"] == 0 and body["data"]["fallback"] is False, body  # Triton answered: a personalised feed
        items = body["data"]["items"]
        assert len(items) == 10 and [it["position"] for it in items] == sorted(it["position"] for it in items)
        assert all(it["type"] in ("content", "product", "ad") and it["tracking"]["event_token"] for it in items)

        again = _stack(state, "up", "--config", "tiny", "--run", str(tiny_run))
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert again.stdout.count("already running") == 3 and "publish:" in again.stdout and "already serves" in again.stdout
        assert {n: int((state / f"{n}.pid").read_text().split()[0]) for n in SERVICES} == pids

        status = _stack(state, "status", "--json")
        assert status.returncode == 0 and json.loads(status.stdout)["up"] is True
    finally:
        down = _stack(state, "down", timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    for name, pid in pids.items():
        assert not _alive(pid), f"{name} (pid {pid}) still runs after down"
        assert not _group(pid), f"{name}'s process group {pid} still has {_group(pid)}"
        assert not (state / f"{name}.pid").exists()
    assert _stack(state, "status").returncode == 1
