"""Fixtures shared by the integration modules that need a model repository of their own (they
publish into it, or break and restore what is served): one published `tiny` run, the Triton
server on it and a redis-server, each started once per module and stopped after it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from genrec.exporters.publish import publish_run
from genrec.runtime.redis_server import RedisServer
from genrec.runtime.triton_server import TritonServer


@pytest.fixture(scope="module")
def repository(request: pytest.FixtureRequest, tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's own model repository: the tiny run, published."""
    repo = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2]) / "model_repository"
    publish_run(tiny_run, repo, progress=lambda m: None)
    return repo


@pytest.fixture(scope="module")
def triton(repository: Path, triton_server: Callable[..., TritonServer]) -> Iterator[TritonServer]:
    """Triton on this module's repository."""
    s = triton_server(repository)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this module's own, so a Redis-down test can stop and restart it."""
    s = RedisServer(maxmemory="64mb").start()
    yield s
    s.stop()
