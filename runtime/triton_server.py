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
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

from genrec.runtime.ports import free_port

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
    ) -> None:
        self.repository = Path(repository).resolve()
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.mode = model_control_mode
        self.log = log
        self.backend_dir = backend_dir
        self.extra_env = dict(env or {})  # e.g. GENREC_SERVING__* for the recommend model
        self.proc: subprocess.Popen | None = None

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
        """Stop the server and its Python stubs (same process group), even if it crashed."""
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
            if sig == signal.SIGTERM:
                time.sleep(0.5)  # let the stubs see their parent go; SIGKILL what is left

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
    a = p.parse_args(argv)
    server = TritonServer(a.repository, a.http_port, a.grpc_port, a.metrics_port, a.model_control_mode, a.log)
    print(f"[triton] {' '.join(server.command()[0])}", flush=True)
    # SIGTERM (docker stop, kill) stops the server and its stubs too, not only this launcher
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.start(timeout=300)
        print(
            f"[triton] ready: HTTP http://{server.http_url}  gRPC {server.grpc_url}  metrics http://localhost:{a.metrics_port}/metrics",
            flush=True,
        )
        assert server.proc is not None
        return server.proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
