"""Shared fixtures: the trained `tiny` run, and the real servers (redis-server, Triton) on free
loopback ports. Every test and benchmark starts its servers through ``genrec.runtime``."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from genrec.runtime.ports import free_port as _free_port
from genrec.runtime.redis_server import RedisServer
from genrec.runtime.triton_server import TritonServer
from genrec.settings import named_config


@pytest.fixture(scope="session")
def tiny_cfg():
    return named_config("tiny", environ={})


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_cfg) -> Path:
    from genrec.train import train

    torch.set_num_threads(2)
    return train(tiny_cfg, None, tmp_path_factory.mktemp("artifacts"))


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run: Path):
    from genrec.bundle import load_bundle

    return load_bundle(tiny_run)


@pytest.fixture
def free_port() -> Callable[[], int]:
    return _free_port


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server for the session (installed by scripts/setup.sh)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: scripts/setup.sh installs it with apt when run as root")
    server = RedisServer(maxmemory="64mb").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., TritonServer]]:
    """Factory: ``triton_server(repository, **env)`` starts a real Triton on free ports with its
    own encoder-state folder and log; every server it started is stopped at the end."""
    started: list[TritonServer] = []

    def start(repository: Path, **env: str) -> TritonServer:
        state = tmp_path_factory.mktemp("state")
        log = tmp_path_factory.mktemp("logs") / "triton.log"
        server = TritonServer.on_free_ports(repository, log=log, env={"GENREC_SERVING__STATE_DIR": str(state), **env})
        started.append(server)
        return server.start(timeout=240)

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def tiny_repository(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository with the `tiny` run published (the four graphs and `recommend`)."""
    from genrec.exporters.publish import publish_run

    repo = tmp_path_factory.mktemp("tiny_repository") / "model_repository"
    publish_run(tiny_run, repo, progress=lambda m: None)
    return repo


@pytest.fixture(scope="session")
def tiny_triton(tiny_repository: Path, triton_server: Callable[..., TritonServer]) -> TritonServer:
    """One Triton serving the published `tiny` run, shared by the client, load-test and dashboard tests."""
    return triton_server(tiny_repository)


class BentoServe:
    """``bentoml serve genrec.feed.service:FeedService`` on a free port, as a subprocess (own
    process group), ready once ``/readyz`` answers 200; stopped with its group."""

    def __init__(self, env: dict[str, str], log: Path, port: int | None = None) -> None:
        self.port = port or _free_port()
        self.env, self.log = env, log
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> BentoServe:
        # a BENTOML_HOME of its own: `bentoml serve` empties $BENTOML_HOME/prometheus_multiproc_dir
        # at start, so two services sharing one would wipe each other's metrics
        home = self.log.parent / f"bentoml_home_{self.port}"
        env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "BENTOML_HOME": str(home), "GENREC_FEED__PORT": str(self.port), **self.env}
        cmd = [
            str(Path(sys.executable).parent / "bentoml"),
            "serve",
            "genrec.feed.service:FeedService",
            "--port",
            str(self.port),
            "--host",
            "127.0.0.1",
        ]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bentoml serve exited with {self.proc.returncode}; log: {self.log}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"the feed service was not ready within {timeout} s; log: {self.log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="session")
def feed_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., BentoServe]]:
    """Factory: ``feed_service(**env)`` starts the BentoML feed service (env: ``GENREC_FEED__...``)
    on a free port and waits for /readyz; every service it started is stopped at the end."""
    started: list[BentoServe] = []

    def start(**env: str) -> BentoServe:
        service = BentoServe(env, tmp_path_factory.mktemp("feed") / "bentoml.log")
        started.append(service)
        return service.start()

    yield start
    for service in started:
        service.stop()


class TinyFeed:
    """The feed service over ``tiny_triton`` and a redis-server of its own (seeded users u0..)."""

    def __init__(self, service: BentoServe, redis: RedisServer, run: Path) -> None:
        self.service, self.redis, self.run = service, redis, run

    @property
    def url(self) -> str:
        return self.service.url

    def seed(self, users: int = 200) -> None:
        cmd = [sys.executable, "-m", "genrec.feed.seed", "--run", str(self.run), "--redis-url", self.redis.url, "--users", str(users)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]

    def restart_redis(self) -> None:
        """Start the (stopped) redis-server again on its port and seed it again (no persistence)."""
        self.redis.proc = RedisServer(port=self.redis.port, maxmemory="64mb").start().proc
        self.seed()


@pytest.fixture(scope="session")
def tiny_feed(tiny_run: Path, tiny_repository: Path, tiny_triton: TritonServer, feed_service) -> Iterator[TinyFeed]:
    """One feed service on the published `tiny` run, shared by the client, load-test and dashboard tests."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: scripts/setup.sh installs it with apt when run as root")
    redis = RedisServer(maxmemory="64mb").start()
    feed = TinyFeed(None, redis, tiny_run)  # type: ignore[arg-type]
    feed.seed()
    feed.service = feed_service(
        GENREC_FEED__TRITON_GRPC_URL=tiny_triton.grpc_url,
        GENREC_FEED__REDIS_URL=redis.url,
        GENREC_FEED__RUN_DIR=str(tiny_run),
        GENREC_FEED__MODEL_REPOSITORY=str(tiny_repository),
        GENREC_FEED__SIGNING_KEY="test-signing-key",
    )
    yield feed
    feed.service.stop()
    redis.stop()
