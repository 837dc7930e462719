"""The whole serving stack on loopback, one command: Triton, redis-server and the BentoML feed service.

    genrec-stack up [--config small|tiny] [--run DIR]   # train/publish if needed, start, wait until ready
    genrec-stack status [--json]                        # what runs, where, healthy or not
    genrec-stack demo                                   # a sample feed, a click, the next feed
    genrec-stack down                                   # stop what `up` started (by pid), nothing else

`up` reuses the latest run of the config under artifacts/runs (else trains it with
`genrec-train`), publishes it with `genrec-publish` unless the newest `recommend` version in the
repository already serves that run, starts what is not already running (each detached, in its own
process group, pid in <state-dir>/<name>.pid, log in <state-dir>/<name>.log), seeds Redis with
the run's users (`genrec-feed-seed`, once) and waits for readiness. Running it again reuses
what runs and is healthy.

Existing servers instead of starting them (environment):
    REDIS_URL=redis://host:6379/0            use this Redis (not started, not stopped)
    TRITON_GRPC_URL=host:8001                use this Triton (not started, published to or stopped;
    TRITON_HTTP_URL=host:8000                it must serve `recommend`); HTTP (optional) for health

Ports default to 3000 (feed), 8000/8001/8002 (Triton HTTP/gRPC/metrics), 6379 (Redis); `--free-ports`
picks free ones (tests, a second stack). The state folder (default build/stack, or
$GENREC_STACK_DIR) remembers the ports, so `status`, `demo` and `down` need only --state-dir.

Redis runs from <state-dir>/redis/redis.conf: append-only file with `appendfsync everysec` (a crash
loses at most about the last second of acknowledged writes), data in <state-dir>/redis/, and
`maxmemory` with `noeviction`: histories, relations and idempotency records are the only copy, so
a full Redis must refuse writes (the feed answers /v1/events with 503) rather than silently evict
a user's history the way allkeys-lru would.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from genrec.runtime.ports import free_port
from genrec.runtime.redis_server import RedisServer
from genrec.runtime.triton_server import REPO_ROOT

DEFAULT_STATE_DIR = Path(os.environ.get("GENREC_STACK_DIR", REPO_ROOT / "build" / "stack"))
DEFAULT_PORTS = {"feed": 3000, "triton_http": 8000, "triton_grpc": 8001, "triton_metrics": 8002, "redis": 6379}
SERVICES = ("triton", "redis", "feed")  # start order; stopped in reverse
REDIS_MAXMEMORY = "1gb"
BIN = Path(sys.executable).parent  # the virtualenv's console scripts sit beside its python


def say(msg: str) -> None:
    print(f"[stack] {msg}", flush=True)


class StackError(RuntimeError):
    pass


@dataclass
class State:
    """What `up` decided and started; saved as <state-dir>/stack.json."""

    config: str = "small"
    run: str = ""
    repository: str = ""
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    external: dict[str, str] = field(default_factory=dict)  # redis / triton_http / triton_grpc given by env
    seeded: dict[str, str] = field(default_factory=dict)  # {"run", "redis_url"} of the last seed

    @property
    def redis_url(self) -> str:
        return self.external.get("redis") or f"redis://127.0.0.1:{self.ports['redis']}/0"

    @property
    def triton_http(self) -> str:
        return self.external.get("triton_http") or ("" if self.external.get("triton_grpc") else f"127.0.0.1:{self.ports['triton_http']}")

    @property
    def triton_grpc(self) -> str:
        return self.external.get("triton_grpc") or f"127.0.0.1:{self.ports['triton_grpc']}"

    @property
    def feed_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['feed']}"

    @property
    def triton_metrics(self) -> str:
        if self.external.get("triton_http") or self.external.get("triton_grpc"):
            return ""
        return f"http://127.0.0.1:{self.ports['triton_metrics']}/metrics"


class Stack:
    def __init__(self, state_dir: Path = DEFAULT_STATE_DIR) -> None:
        self.dir = Path(state_dir).resolve()
        self.state_file = self.dir / "stack.json"

    # ---- state and pid files -------------------------------------------------------------
    def load(self) -> State | None:
        if not self.state_file.exists():
            return None
        d = json.loads(self.state_file.read_text())
        return State(**{k: v for k, v in d.items() if k in State.__dataclass_fields__})

    def save(self, st: State) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(st), indent=2) + "\n")
        os.replace(tmp, self.state_file)

    def pid_file(self, name: str) -> Path:
        return self.dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.dir / f"{name}.log"

    def pid(self, name: str) -> int | None:
        """The pid of a service this stack started, if that very process still runs.

        The pid file holds ``<pid> <start time>``; a pid reused by another process (a different
        start time in /proc) counts as gone, and so does a file without a start time (nothing
        proves the process is ours), so `down` can never signal a stranger."""
        f = self.pid_file(name)
        if not f.exists():
            return None
        try:
            pid_s, start_s = (f.read_text().split() + [""])[:2]
            pid = int(pid_s)
        except ValueError:
            return None
        if not start_s:
            return None
        start = _start_time(pid)
        if start is None or start != start_s:
            return None
        return pid

    def record(self, name: str, pid: int) -> None:
        """Write ``<pid> <start time>``. No start time (the process already exited) is a failed
        start: nothing is recorded, since a pid without one could later name any process."""
        start = _start_time(pid)
        if start is None:
            self.pid_file(name).unlink(missing_ok=True)
            raise StackError(f"{name} (pid {pid}) exited as it started; see {self.log_file(name)}:\n{_tail(self.log_file(name))}")
        self.pid_file(name).write_text(f"{pid} {start}\n")

    # ---- health ----------------------------------------------------------------------------
    def healthy(self, name: str, st: State) -> bool:
        if name == "triton":
            return _triton_ready(st)
        if name == "redis":
            return _redis(st.redis_url, "PING") is True
        return _http_ok(f"{st.feed_url}/readyz")

    # ---- up ---------------------------------------------------------------------------------
    def up(
        self,
        config: str,
        run: Path | None,
        repository: Path | None,
        ports: dict[str, int | None],
        free_ports: bool,
        results: Path | None,
        timeout: float,
    ) -> State:
        self.dir.mkdir(parents=True, exist_ok=True)
        old = self.load()
        st = State(config=config)
        st.external = {
            k: v
            for k, v in (("redis", _env("REDIS_URL")), ("triton_http", _env("TRITON_HTTP_URL")), ("triton_grpc", _env("TRITON_GRPC_URL")))
            if v
        }
        if st.external.get("triton_http") and not st.external.get("triton_grpc"):
            raise StackError("TRITON_HTTP_URL is set: set TRITON_GRPC_URL too (the feed service calls Triton over gRPC)")
        st.ports = self._ports(old, ports, free_ports)
        st.seeded = dict(old.seeded) if old else {}

        repo = (repository or (REPO_ROOT / "model_repository" if config == "small" else self.dir / f"model_repository_{config}")).resolve()
        st.repository = str(repo)
        alive = [n for n in SERVICES if self.pid(n) is not None]
        if old is not None and alive and (old.config != config or Path(old.repository) != repo):
            raise StackError(
                f"a `{old.config}` stack on {_rel(Path(old.repository))} runs here ({', '.join(alive)}): "
                f"stop it first (genrec-stack down{_state_arg(self)}) or use another --state-dir"
            )
        run = (run or self._latest_or_train(config)).resolve()
        st.run = str(run)
        say(f"run: {_rel(run)}")
        external_triton = bool(st.external.get("triton_http") or st.external.get("triton_grpc"))
        if not external_triton:
            running = self.pid("triton") is not None and self.healthy("triton", st)
            self._publish(run, config, repo, results, st.triton_http if running else None)
        else:
            say(f"Triton: using {st.external} (TRITON_*_URL); publish to it yourself with genrec-publish --triton-url")
        self.save(st)

        started: list[str] = []
        try:
            if not external_triton:
                self._ensure("triton", st, lambda: self._start_triton(st, repo), started)
            else:
                say("triton: external, not started")
            if not st.external.get("redis"):
                self._ensure("redis", st, lambda: self._start_redis(st), started)
            else:
                say(f"redis: external {st.redis_url}, not started")
            self._wait("redis", st, 30)
            self._seed(st, run)
            self.save(st)
            if self.pid("feed") is not None and old is not None and old.run != st.run:
                say(f"feed: still serves {_rel(Path(old.run))}; `genrec-stack down` then `up` to serve {_rel(run)}")
            self._ensure("feed", st, lambda: self._start_feed(st, run), started)
            for name in ("triton", "feed"):
                if name == "triton" and external_triton:
                    continue
                self._wait(name, st, timeout)
            if external_triton and not self.healthy("triton", st):
                raise StackError(f"the external Triton ({st.external}) does not serve a READY `recommend`")
        except BaseException as e:
            # leave nothing half-started behind: stop what this call started (not what it reused)
            for name in reversed(started):
                pid = self.pid(name)
                if pid is not None:
                    say(f"{name}: stopping pid {pid} (this `up` started it and failed)")
                    _stop_group(pid, 30)
                self.pid_file(name).unlink(missing_ok=True)
            if isinstance(e, StackError | KeyboardInterrupt):
                raise
            raise StackError(f"{type(e).__name__}: {e}") from e
        self.save(st)
        return st

    def _ports(self, old: State | None, given: dict[str, int | None], free_ports: bool) -> dict[str, int]:
        out: dict[str, int] = {}
        for k, default in DEFAULT_PORTS.items():
            port = given.get(k)
            if port:
                out[k] = int(port)
            elif old is not None and k in old.ports:
                out[k] = old.ports[k]  # keep what a running stack uses
            else:
                out[k] = free_port() if free_ports else default
        return out

    def _latest_or_train(self, config: str) -> Path:
        from genrec.artifacts import latest_run

        try:
            return latest_run(name=config)
        except FileNotFoundError:
            say(f"no trained `{config}` run under artifacts/runs: training it (genrec-train --config {config})")
            _run([str(BIN / "genrec-train"), "--config", config])
            return latest_run(name=config)

    def _publish(self, run: Path, config: str, repo: Path, results: Path | None, triton_http: str | None) -> None:
        served = published_run(repo)
        if served == str(run):
            say(f"publish: {_rel(repo)}/recommend already serves {_rel(run)}")
            return
        if config != "small" and not (repo / "recommend" / "config.pbtxt").exists():
            # the committed configs are for `small`; another config gets its own repository
            _run([str(BIN / "genrec-publish"), "--write-configs", config, "--repository", str(repo)])
        cmd = [str(BIN / "genrec-publish"), "--run", str(run), "--repository", str(repo)]
        cmd += ["--results", str(results)] if results else ["--no-summary"]
        if triton_http:
            cmd += ["--triton-url", triton_http]  # load the new versions into the running server
        say(f"publish: {_rel(run)} -> {_rel(repo)}")
        _run(cmd)

    def _ensure(self, name: str, st: State, start, started: list[str]) -> None:
        pid = self.pid(name)
        if pid is not None:
            say(f"{name}: already running (pid {pid}), reused")
            return
        self.pid_file(name).unlink(missing_ok=True)
        for key in _PORT_KEYS[name]:
            if _port_busy(st.ports[key]):
                raise StackError(
                    f"{name}: port {st.ports[key]} ({key}) is taken by a process this stack did not start; "
                    f"pass --{key.replace('_', '-')}-port / --free-ports, or point the stack at it (REDIS_URL, TRITON_*_URL)"
                )
        pid = start()
        self.record(name, pid)
        started.append(name)
        say(f"{name}: started (pid {pid}, log {_rel(self.log_file(name))})")

    def _start_triton(self, st: State, repo: Path) -> int:
        state = self.dir / "triton_state"  # milvus-lite files of the recommend model
        state.mkdir(parents=True, exist_ok=True)
        # the launcher (genrec-triton), not the bare server: it runs the watchdog (runtime/watchdog.py)
        # and, on SIGTERM from `down`, stops the server and its stubs within the exit timeout
        cmd = [sys.executable, "-m", "genrec.runtime.triton_server", "--repository", str(repo), "--log", str(self.log_file("triton"))]
        for flag, key in (("--http-port", "triton_http"), ("--grpc-port", "triton_grpc"), ("--metrics-port", "triton_metrics")):
            cmd += [flag, str(st.ports[key])]
        return _spawn(cmd, {**os.environ, "GENREC_SERVING__STATE_DIR": str(state)}, self.log_file("triton"))

    def _start_redis(self, st: State) -> int:
        data = self.dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        conf = data / "redis.conf"
        conf.write_text(redis_config(data))
        server = RedisServer(st.ports["redis"], config=conf, log=self.log_file("redis"), detach=True).start(timeout=30)
        assert server.proc is not None
        return server.proc.pid

    def _seed(self, st: State, run: Path) -> None:
        want = {"run": str(run), "redis_url": st.redis_url}
        if st.seeded == want and _redis_keys(st.redis_url) > 0:
            say("redis: already seeded with this run's users")
            return
        seed = BIN / "genrec-feed-seed"
        if not seed.exists():
            raise StackError(f"{seed} is missing: the feed package is not installed (.venv/bin/pip install --no-deps -e .)")
        say(f"redis: seeding the run's users ({seed.name})")
        _run([str(seed), "--run", str(run), "--redis-url", st.redis_url])
        st.seeded = want

    def _start_feed(self, st: State, run: Path) -> int:
        env = dict(os.environ)
        env.update(
            {
                "GENREC_FEED__TRITON_GRPC_URL": st.triton_grpc,
                "GENREC_FEED__REDIS_URL": st.redis_url,
                "GENREC_FEED__RUN_DIR": str(run),
                "GENREC_FEED__MODEL_REPOSITORY": st.repository,
                "GENREC_FEED__SIGNING_KEY": os.environ.get("GENREC_FEED__SIGNING_KEY") or self._signing_key(),
                "GENREC_FEED__PORT": str(st.ports["feed"]),
                "BENTOML_HOME": str(self.dir / "bentoml"),
                "BENTOML_DO_NOT_TRACK": "true",
            }
        )
        cmd = [str(BIN / "bentoml"), "serve", "genrec.feed.service:FeedService", "--host", "127.0.0.1", "--port", str(st.ports["feed"])]
        return _spawn(cmd, env, self.log_file("feed"))

    def _signing_key(self) -> str:
        """A random key for cursors and event tokens, kept in the state folder so a restarted
        feed service still accepts the tokens it gave out (GENREC_FEED__SIGNING_KEY wins)."""
        f = self.dir / "signing_key"
        if not f.exists():
            import secrets

            fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(32))
        return f.read_text().strip()

    def _wait(self, name: str, st: State, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        t0 = time.monotonic()
        while time.monotonic() < deadline:
            if self.healthy(name, st):
                say(f"{name}: ready ({time.monotonic() - t0:.1f} s)")
                return
            if not _is_external(name, st) and self.pid(name) is None:
                raise StackError(f"{name} exited while starting; see {self.log_file(name)}:\n{_tail(self.log_file(name))}")
            time.sleep(0.5)
        raise StackError(f"{name} not ready after {timeout:.0f} s; see {self.log_file(name)}:\n{_tail(self.log_file(name))}")

    # ---- down ---------------------------------------------------------------------------------
    def down(self, timeout: float = 30.0) -> list[str]:
        stopped = []
        for name in reversed(SERVICES):
            f = self.pid_file(name)
            pid = self.pid(name)
            if pid is None:
                if f.exists():
                    say(f"{name}: not running (stale pid file removed)")
                f.unlink(missing_ok=True)
                continue
            say(f"{name}: stopping pid {pid} (process group)")
            _stop_group(pid, timeout)
            f.unlink(missing_ok=True)
            stopped.append(name)
        return stopped

    # ---- status ---------------------------------------------------------------------------------
    def status(self) -> dict:
        st = self.load()
        out: dict = {"state_dir": str(self.dir), "up": False, "services": {}}
        if st is None:
            return out
        out.update(config=st.config, run=st.run, repository=st.repository, urls=urls(st, self))
        for name in SERVICES:
            ext = _is_external(name, st)
            pid = self.pid(name)
            out["services"][name] = {
                "pid": pid,
                "external": ext,
                "healthy": self.healthy(name, st) if (pid or ext) else False,
                "log": "" if ext else str(self.log_file(name)),
            }
        out["up"] = all(s["healthy"] for s in out["services"].values())
        return out


_PORT_KEYS = {"triton": ("triton_http", "triton_grpc", "triton_metrics"), "redis": ("redis",), "feed": ("feed",)}


def redis_config(data_dir: Path) -> str:
    return "\n".join(
        [
            "# genrec-stack: Redis for the feed service (port and bind come from the command line)",
            f"dir {data_dir}",
            "appendonly yes",
            "appendfilename appendonly.aof",
            "# a crash (of Redis or the machine) loses at most about the last second of acknowledged writes",
            "appendfsync everysec",
            "# the append-only file is the persistence; no RDB snapshots on top",
            'save ""',
            f"maxmemory {REDIS_MAXMEMORY}",
            "# histories, relations and idempotency records have no other copy: refuse writes when full",
            "# (the feed answers 503) instead of evicting a user's history silently (allkeys-lru would)",
            "maxmemory-policy noeviction",
            "protected-mode yes",
            "",
        ]
    )


def published_run(repository: Path) -> str | None:
    """The source run of the newest published `recommend` version (the one Triton serves)."""
    d = Path(repository) / "recommend"
    versions = sorted((int(p.name) for p in d.iterdir() if p.name.isdigit()), reverse=True) if d.exists() else []
    for v in versions[:1]:
        for f in ("serving.json", "manifest.json"):
            p = d / str(v) / f
            if p.exists():
                try:
                    return json.loads(p.read_text()).get("source_run")
                except (OSError, ValueError):
                    return None
    return None


def urls(st: State, stack: Stack) -> dict[str, str]:
    return {
        "feed": st.feed_url,
        "docs": f"{st.feed_url}/",  # BentoML's Swagger UI; the OpenAPI document is /docs.json
        "openapi": f"{st.feed_url}/docs.json",
        "feed_metrics": f"{st.feed_url}/metrics",
        "triton_http": st.triton_http,
        "triton_grpc": st.triton_grpc,
        "triton_metrics": st.triton_metrics,
        "redis": st.redis_url,
        "logs": str(stack.dir),
    }


def _is_external(name: str, st: State) -> bool:
    if name == "triton":
        return bool(st.external.get("triton_http") or st.external.get("triton_grpc"))
    return name == "redis" and bool(st.external.get("redis"))


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def _rel(p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(p)


def _run(cmd: list[str]) -> None:
    say("$ " + " ".join(_rel(Path(c)) if c.startswith("/") else c for c in cmd))
    r = subprocess.run(cmd, cwd=REPO_ROOT)
    if r.returncode != 0:
        raise StackError(f"{Path(cmd[0]).name} failed with exit code {r.returncode}")


def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> int:
    """A detached child: its own session and process group, output appended to ``log``."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd, env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    return proc.pid


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks), or None if the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has finished
        return None
    return fields[19]


def _stop_group(pid: int, timeout: float) -> None:
    """SIGTERM the process group led by ``pid`` (Triton's Python stubs, BentoML's workers), then SIGKILL."""
    start = _start_time(pid)
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    target = pgid if pgid == pid else None  # only a group this stack created (its leader is the pid)
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(target, sig) if target else os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if _start_time(pid) != start and not (target and _group_alive(target)):
                return
            time.sleep(0.2)


def _group_alive(pgid: int) -> bool:
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                return True
    return False


def _port_busy(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _triton_ready(st: State) -> bool:
    if st.triton_http:
        return _http_ok(f"http://{st.triton_http}/v2/health/ready") and _http_ok(f"http://{st.triton_http}/v2/models/recommend/ready")
    try:
        import tritonclient.grpc as grpcclient

        c = grpcclient.InferenceServerClient(st.triton_grpc)
        return bool(c.is_server_ready() and c.is_model_ready("recommend"))
    except Exception:
        return False


def _redis(url: str, command: str) -> object:
    """One command through redis-py (a URL may carry a password, a database, TLS); None on failure."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        try:
            return client.execute_command(command)
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return None


def _redis_keys(url: str) -> int:
    n = _redis(url, "DBSIZE")
    return n if isinstance(n, int) else 0


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def print_where(st: State, stack: Stack) -> None:
    u = urls(st, stack)
    say(f"feed API      {u['feed']}/v1/feed   docs (Swagger UI): {u['docs']}   OpenAPI: {u['openapi']}")
    say(f"metrics       {u['feed_metrics']}" + (f"   {u['triton_metrics']}" if u["triton_metrics"] else ""))
    say(f"Triton        HTTP {u['triton_http'] or '-'}   gRPC {u['triton_grpc']}")
    say(f"Redis         {u['redis']}")
    say(f"logs, pids    {_rel(stack.dir)}/<triton|redis|feed>.log|.pid")
    say(f"stop with     genrec-stack down{_state_arg(stack)}")


def _state_arg(stack: Stack) -> str:
    return "" if stack.dir == DEFAULT_STATE_DIR.resolve() else f" --state-dir {_rel(stack.dir)}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="genrec-stack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="pid files, logs, Redis data, stack.json (default build/stack or $GENREC_STACK_DIR)",
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    up = sub.add_parser("up", parents=[common], help="train/publish if needed, start what is not running, wait until ready")
    up.add_argument(
        "--config", default=os.environ.get("CONFIG", "small"), choices=["tiny", "small", "full"], help="named config (default small)"
    )
    up.add_argument(
        "--run", type=Path, default=None, help="trained run folder (default: the config's latest under artifacts/runs, else train it)"
    )
    up.add_argument(
        "--repository",
        type=Path,
        default=None,
        help="model repository (default model_repository/ for small, else <state-dir>/model_repository_<config>)",
    )
    up.add_argument("--results", type=Path, default=None, help="when publishing, write the exporter summary here (default: no summary)")
    up.add_argument("--free-ports", action="store_true", help="free loopback ports for every port not given (tests, a second stack)")
    for key, default in DEFAULT_PORTS.items():
        up.add_argument(f"--{key.replace('_', '-')}-port", type=int, default=None, dest=key, help=f"(default {default})")
    up.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for each server to be ready (default 600)")

    for name, text in (
        ("down", "stop what `up` started (by pid and process group), nothing else"),
        ("status", "what runs, where, healthy or not"),
    ):
        s = sub.add_parser(name, parents=[common], help=text)
        if name == "status":
            s.add_argument("--json", action="store_true", help="machine-readable")
    demo = sub.add_parser(
        "demo", parents=[common], help="a sample feed, a click with its event token, the next feed (the stack must be up)"
    )
    demo.add_argument("--user", default=None, help="user id (default: a seeded user of the run)")
    demo.add_argument("--count", type=int, default=10)

    a = p.parse_args(argv)
    stack = Stack(a.state_dir)
    try:
        if a.cmd == "up":
            t0 = time.monotonic()
            ports = {k: getattr(a, k) for k in DEFAULT_PORTS}
            st = stack.up(a.config, a.run, a.repository, ports, a.free_ports, a.results, a.timeout)
            say(f"up in {time.monotonic() - t0:.0f} s: `{st.config}` run {_rel(Path(st.run))}")
            print_where(st, stack)
            return 0
        if a.cmd == "down":
            stopped = stack.down()
            say(f"down: stopped {', '.join(stopped) or 'nothing (nothing of this stack was running)'}")
            return 0
        if a.cmd == "status":
            info = stack.status()
            state = stack.load()
            if a.json:
                print(json.dumps(info, indent=2))
            elif state is None:
                say(f"no stack under {_rel(stack.dir)} (genrec-stack up)")
            else:
                say(f"`{info['config']}` run {_rel(Path(info['run']))}, repository {_rel(Path(info['repository']))}")
                for name, v in info["services"].items():
                    who = "external" if v["external"] else (f"pid {v['pid']}" if v["pid"] else "not running")
                    say(f"{name:7s} {who:12s} {'healthy' if v['healthy'] else 'NOT healthy'}  {_rel(Path(v['log'])) if v['log'] else ''}")
                if info["up"]:
                    print_where(state, stack)
                else:
                    say(f"not (fully) up: genrec-stack up{_state_arg(stack)}; logs in {_rel(stack.dir)}")
            return 0 if info["up"] else 1
        if a.cmd == "demo":
            from genrec.runtime.feed_demo import run_demo

            state = stack.load()
            if state is None or not stack.status()["up"]:
                say(f"the stack is not up: genrec-stack up{_state_arg(stack)}")
                return 1
            try:
                run_demo(state.feed_url, Path(state.run), user=a.user, count=a.count, triton_metrics=state.triton_metrics)
            except (RuntimeError, OSError) as e:
                say(f"demo failed: {e}")
                return 1
            print_where(state, stack)
            return 0
    except StackError as e:
        say(f"failed: {e}")
        return 1
    except KeyboardInterrupt:
        say("interrupted: what this call started is stopped, what it reused keeps running (genrec-stack down stops it)")
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
