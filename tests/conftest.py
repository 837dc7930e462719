"""Shared fixtures. The `tiny_run` fixture trains the `tiny` configuration once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

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


@pytest.fixture(scope="session")
def redis_url():
    """A real redis-server for the session (installed by scripts/setup.sh)."""
    import shutil

    from genrec.redis_runtime import RedisServer

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: scripts/setup.sh installs it with apt when run as root")
    server = RedisServer(maxmemory="64mb").start()
    yield server.url
    server.stop()
