"""Start a real ``redis-server`` (tests, benchmarks, local runs).

By default: a free port, no persistence, an LRU memory cap, a child of this process. The local
stack (``genrec-stack``) passes a config file instead (append-only persistence, a data folder,
``noeviction``), a log file and ``detach=True``, so the server outlives the launcher."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from genrec.runtime.ports import free_port


def ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a Redis server answers PING on host:port (no client library needed)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    def __init__(
        self,
        port: int | None = None,
        maxmemory: str = "256mb",
        *,
        config: Path | None = None,
        log: Path | None = None,
        detach: bool = False,
    ) -> None:
        """``config``: a redis.conf that replaces the default settings (no persistence, LRU cap);
        ``--port``/``--bind`` still come from here. ``log``: append the server's output there.
        ``detach``: its own session, so it keeps running after this process exits."""
        self.port = port or free_port()
        self.maxmemory = maxmemory
        self.config, self.log, self.detach = config, log, detach
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed (scripts/setup.sh installs it with apt when run as root)")
        if self.config is not None:
            return [binary, str(self.config), "--port", str(self.port), "--bind", "127.0.0.1"]
        cmd = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        return cmd + ["--maxmemory", self.maxmemory, "--maxmemory-policy", "allkeys-lru"]

    def start(self, timeout: float = 10.0) -> RedisServer:
        cmd = self.command()
        out = open(self.log, "ab") if self.log else None
        try:
            stdout = subprocess.DEVNULL if out is None else out
            self.proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.STDOUT, start_new_session=self.detach)
        finally:
            if out is not None:
                out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ping("127.0.0.1", self.port, 0.2):
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(
            f"redis-server did not answer on port {self.port} within {timeout} s" + (f"; see {self.log}" if self.log else "")
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None
