"""Start the real Triton Inference Server on a model repository.

    genrec-triton                              # model_repository/, ports 8000/8001/8002
    genrec-triton --repository R --http-port 18000 --model-control-mode poll

Uses ``tritonserver`` from PATH when present (the NVIDIA container, native C++ backends);
otherwise the server shipped in the ``nvidia-pytriton`` wheel, with a backend directory built
under ``build/triton_backends``: the wheel's Python backend (plus the stub for this Python),
and ``ensemble/backends/onnxruntime`` as a Python-based backend named ``onnxruntime``, so the
same ``platform: "onnxruntime_onnx"`` configs load in both runtimes.
Model control is ``explicit`` by default (every model in the repository is loaded at start;
publish and rollback then load/unload through the repository API).

``genrec-triton`` also runs the watchdog (``runtime/watchdog.py``, on unless
``GENREC_SERVING__WATCHDOG=false``): a dead or stuck model instance is unloaded and loaded again
(Triton's readiness is false meanwhile), the server restarted if that fails twice. A stop
(SIGTERM, Ctrl-C) takes at most ``--exit-timeout-secs`` (GENREC_SERVING__EXIT_TIMEOUT_S, 5 s)
plus a moment, also with a dead or busy stub: what is left then is killed. See runtime/README.md,
"Operations: faults".
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from genrec.runtime.ports import free_port

if TYPE_CHECKING:
    from genrec.runtime.watchdog import RestartBudget

REPO_ROOT = Path(__file__).resolve().parent.parent
BACKEND_SOURCES = REPO_ROOT / "ensemble" / "backends"


def _pytriton_root() -> Path | None:
    try:
        import pytriton
    except ImportError:
        return None
    return Path(pytriton.__file__).parent / "tritonserver"


def find_server() -> tuple[Path, bool]:
    """(tritonserver binary, True if it is the pip wheel's)."""
    on_path = shutil.which("tritonserver")
    if on_path:
        return Path(on_path), False
    root = _pytriton_root()
    if root is None or not (root / "bin" / "tritonserver").exists():
        raise FileNotFoundError("no tritonserver on PATH and nvidia-pytriton is not installed (pip install nvidia-pytriton)")
    return root / "bin" / "tritonserver", True


def build_backend_dir(target: Path) -> Path:
    """Backend directory for the pip runtime: python backend + stub, and Python-based backends."""
    root = _pytriton_root()
    assert root is not None
    py = target / "python"
    py.mkdir(parents=True, exist_ok=True)
    for f in ("libtriton_python.so", "triton_python_backend_utils.py"):
        _install(root / "backends" / "python" / f, py / f)
    stub = root / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / "triton_python_backend_stub"
    _install(stub, py / "triton_python_backend_stub")
    for src in BACKEND_SOURCES.iterdir():
        if (src / "model.py").exists():
            dst = target / src.name
            dst.mkdir(parents=True, exist_ok=True)
            _install(src / "model.py", dst / "model.py")
    return target


def _install(src: Path, dst: Path) -> None:
    """Copy beside and rename over: a server that is running the old file keeps its inode."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}")
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def server_env(pip_runtime: bool) -> dict[str, str]:
    env = dict(os.environ)
    site = sysconfig.get_paths()["purelib"]
    env["PYTHONPATH"] = os.pathsep.join(p for p in (site, str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    if pip_runtime:
        libs = [str(Path(site) / "nvidia_pytriton.libs")]
        # The stub links libpython3.X.so by soname; let it find the one of the interpreter whose
        # stdlib it then imports (else, e.g., the system's 3.11.2 lib with pyenv's 3.11.7 stdlib:
        # `import ssl` fails on a missing symbol).
        libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
        if libdir and soname and (Path(libdir) / soname).exists():
            libs.insert(0, libdir)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (*libs, env.get("LD_LIBRARY_PATH", "")) if p)
    return env


def scrape_metrics(url: str, settle_s: float = 0.0, timeout_s: float = 5.0) -> str:
    """Triton's metrics page. ``settle_s``: wait first, so that the ``recommend`` model's custom
    metrics, sent from a background thread every ``serving.metrics_flush_s``, include the requests
    that just ended (pass ``metrics_settle_s()`` where a figure must count them)."""
    if settle_s > 0:
        time.sleep(settle_s)
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        return r.read().decode()


def metrics_settle_s() -> float:
    """How long after a request its custom metrics are surely on the page (the flush interval of
    this environment's settings, plus a margin)."""
    from genrec.settings import named_config

    return named_config("tiny").serving.metrics_flush_s + 0.3  # serving settings: the same in every size


class TritonServer:
    """A running tritonserver process: start, wait for readiness, stop."""

    def __init__(
        self,
        repository: Path,
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        model_control_mode: str = "explicit",
        log: Path | None = None,
        backend_dir: Path | None = None,
        env: dict[str, str] | None = None,
        exit_timeout_s: int = 5,
    ) -> None:
        self.exit_timeout_s = exit_timeout_s
        self.lock = threading.RLock()  # held across a restart, so a supervisor can tell it from an exit
        self.shm_regions: set[str] = set()  # stubs' /dev/shm regions seen (the watchdog adds to it)
        self.repository = Path(repository).resolve()
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.mode = model_control_mode
        self.log = log
        self.backend_dir = backend_dir
        self.extra_env = dict(env or {})  # e.g. GENREC_SERVING__* for the recommend model
        self.proc: subprocess.Popen | None = None
        # set when the launcher must exit non-zero: "restart_failed" (a restart could not start
        # the server) or "restart_budget_spent" (the watchdog stopped it past the restart budget)
        self.exit_reason: str | None = None

    @classmethod
    def on_free_ports(
        cls,
        repository: Path,
        log: Path | None = None,
        env: dict[str, str] | None = None,
        model_control_mode: str = "explicit",
        backend_dir: Path | None = None,
    ) -> TritonServer:
        """A server on three free loopback ports (tests, benchmarks, a second local stack)."""
        ports = free_port(), free_port(), free_port()
        return cls(repository, *ports, model_control_mode=model_control_mode, log=log, env=env, backend_dir=backend_dir)

    @property
    def metrics_url(self) -> str:
        return f"http://localhost:{self.metrics_port}/metrics"

    @property
    def http_url(self) -> str:
        return f"localhost:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"localhost:{self.grpc_port}"

    def command(self) -> tuple[list[str], dict[str, str]]:
        binary, pip_runtime = find_server()
        cmd = [
            str(binary),
            f"--model-repository={self.repository}",
            f"--model-control-mode={self.mode}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--strict-readiness=true",
            "--exit-on-error=false",
            f"--exit-timeout-secs={self.exit_timeout_s}",  # a dead or busy stub must not hold a stop for 30 s
            "--log-verbose=0",
        ]
        if self.mode == "explicit":
            cmd.append("--load-model=*")
        if self.mode == "poll":
            cmd.append("--repository-poll-secs=2")
        if pip_runtime:
            backends = build_backend_dir(self.backend_dir or REPO_ROOT / "build" / "triton_backends")
            cmd.append(f"--backend-directory={backends}")
        return cmd, {**server_env(pip_runtime), **self.extra_env}

    def start(self, timeout: float = 180.0) -> TritonServer:
        cmd, env = self.command()
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()  # never leave a half-started server holding the ports
            raise
        return self

    def _health(self, what: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/{what}", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def ready(self) -> bool:
        return self._health("ready")

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with code {self.proc.returncode}" + (f"; see {self.log}" if self.log else ""))
            if self.ready():
                return
            time.sleep(0.5)
        raise TimeoutError(f"tritonserver not ready after {timeout:.0f}s" + (f"; see {self.log}" if self.log else ""))

    def stop(self) -> None:
        """Stop the server and its Python stubs (same process group), even if it crashed or a
        stub is dead: SIGTERM, ``exit_timeout_s`` (+2 s) for Triton to unload, then SIGKILL of
        whatever is left in the group (stubs included)."""
        if self.proc is None:
            return
        from genrec.runtime.watchdog import find_stubs

        self.shm_regions.update(s.shm for s in find_stubs(self.proc.pid) if s.shm)
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(self.exit_timeout_s + 2)
        except subprocess.TimeoutExpired:
            pass
        try:  # the stubs of a stopped server, a server past its exit timeout
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            return
        # a killed stub (or a server killed past its exit timeout) leaves its region behind
        for region in list(self.shm_regions):
            Path("/dev/shm", region).unlink(missing_ok=True)
        self.shm_regions.clear()

    def restart(self, timeout: float = 300.0) -> None:
        """Stop and start again on the same ports (the watchdog's last resort, the launcher's
        answer to a crash). A failed start sets ``exit_reason``: the launcher then exits."""
        with self.lock:
            self.stop()
            try:
                self.start(timeout)
            except BaseException:
                self.exit_reason = "restart_failed"
                raise

    def give_up(self) -> None:
        """Stop for good (the watchdog would restart past its budget): the launcher exits non-zero."""
        with self.lock:
            self.exit_reason = "restart_budget_spent"
            self.stop()

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="genrec-triton", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, default=REPO_ROOT / "model_repository", help="model repository (default model_repository/)")
    p.add_argument("--http-port", type=int, default=int(os.environ.get("GENREC_TRITON_HTTP_PORT", 8000)))
    p.add_argument("--grpc-port", type=int, default=int(os.environ.get("GENREC_TRITON_GRPC_PORT", 8001)))
    p.add_argument("--metrics-port", type=int, default=int(os.environ.get("GENREC_TRITON_METRICS_PORT", 8002)))
    p.add_argument("--model-control-mode", choices=["explicit", "poll", "none"], default="explicit", help="explicit (default), or poll")
    p.add_argument("--log", type=Path, default=None, help="write the server log here (default: inherit stdout)")
    p.add_argument(
        "--watchdog-metrics-port",
        type=int,
        default=int(os.environ.get("GENREC_TRITON_WATCHDOG_PORT", 0)),
        help="serve the watchdog's Prometheus counters on this port (default 0: not served; they are logged either way)",
    )
    a = p.parse_args(argv)
    from genrec.runtime.watchdog import RestartBudget
    from genrec.settings import named_config

    serving = named_config().serving  # GENREC_SERVING__* (the same variables the recommend model reads)
    server = TritonServer(
        a.repository, a.http_port, a.grpc_port, a.metrics_port, a.model_control_mode, a.log, exit_timeout_s=serving.exit_timeout_s
    )
    print(f"[triton] {' '.join(server.command()[0])}", flush=True)
    # SIGTERM (docker stop, kill) stops the server and its stubs too, not only this launcher
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    dog = None
    try:
        server.start(timeout=300)
        print(
            f"[triton] ready: HTTP http://{server.http_url}  gRPC {server.grpc_url}  metrics http://localhost:{a.metrics_port}/metrics",
            flush=True,
        )
        # one budget for both kinds of restart: a crash (supervise) and a hung model (the watchdog)
        budget = RestartBudget(serving.server_restarts, serving.server_restart_window_s)
        if serving.watchdog:
            dog = start_watchdog(server, serving, a.watchdog_metrics_port, budget)
        return supervise(server, budget)
    except KeyboardInterrupt:
        return 0
    finally:
        if dog is not None:
            dog.stop()
        server.stop()


def start_watchdog(server: TritonServer, serving, metrics_port: int = 0, budget: RestartBudget | None = None):
    """The watchdog of ``server`` (settings: ServingConfig.watchdog_*), running in a thread;
    its restarts count against ``budget`` (None: unlimited), shared with ``supervise``."""
    from genrec.runtime.watchdog import TritonProbe, Watchdog, WatchdogMetrics

    metrics = WatchdogMetrics() if metrics_port else None
    if metrics is not None:
        metrics.serve(metrics_port)
    return Watchdog(
        TritonProbe(server.http_url, serving.watchdog_canary_timeout_s),
        server_pid=lambda: server.proc.pid if server.proc is not None and server.proc.poll() is None else None,
        interval_s=serving.watchdog_interval_s,
        failures=serving.watchdog_failures,
        unload_timeout_s=serving.watchdog_unload_timeout_s,
        restart=server.restart,
        restart_budget=budget,
        give_up=server.give_up,
        recover_by_reload=server.mode == "explicit",  # the repository API needs explicit model control
        metrics=metrics,
        shm_regions=server.shm_regions,
    ).start()


def supervise(server: TritonServer, budget: RestartBudget | None = None, log=None) -> int:
    """Wait for the server to exit and return its code. A restart by the watchdog is not an exit;
    a crash (killed by a signal, or a non-zero code) is restarted on the same ports while
    ``budget`` allows (a dead stub can take Triton 2.51 down with it); past the budget, or on a
    clean exit (code 0), the launcher exits with the server's code, for its own supervisor."""
    from genrec.runtime.watchdog import RestartBudget, log_json

    budget = budget or RestartBudget()
    log = log or log_json
    while True:
        proc = server.proc
        assert proc is not None
        code = proc.wait()
        with server.lock:  # a restart in progress holds it until the new process is up (or failed)
            if server.exit_reason is not None:  # the watchdog could not, or may not, restart it
                log("server_exited", code=code, action="exit", reason=server.exit_reason, restarts=budget.used)
                return code or 1
            if server.proc is not proc:
                continue  # the watchdog restarted it
            if code == 0 or not budget.allow(time.monotonic()):
                log("server_exited", code=code, action="exit", restarts=budget.used)
                return code
            log("server_exited", code=code, action="restart", restarts=budget.used)
            t0 = time.monotonic()
            try:
                server.restart()
            except Exception as e:  # it cannot start: its supervisor's turn
                log("restart_failed", model=None, seconds=round(time.monotonic() - t0, 3), error=f"{type(e).__name__}: {e}")
                return code or 1
            # the watchdog sees the new server pid and forgets what it knew of the old one
            log("restarted", model=None, reason="server_exited", seconds=round(time.monotonic() - t0, 3))


if __name__ == "__main__":
    sys.exit(main())
