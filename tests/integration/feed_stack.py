"""Helpers of the feed service's integration modules: seeding users with ``genrec-feed-seed``
and the environment that points a ``bentoml serve`` at this module's Triton and Redis."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from genrec.runtime.redis_server import RedisServer
from genrec.runtime.triton_server import TritonServer

SEEDED_USERS = 40
SIGNING_KEY = "test-signing-key"


def seed_users(run: Path, url: str, users: int = SEEDED_USERS) -> str:
    """Seed ``users`` users' histories from ``run`` into Redis; returns the tool's output."""
    out = subprocess.run(
        [sys.executable, "-m", "genrec.feed.seed", "--run", str(run), "--redis-url", url, "--users", str(users)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def feed_env(
    run: Path, repository: Path, triton: TritonServer, redis: RedisServer, triton_timeout_s: float = 3.0, **extra: str
) -> dict[str, str]:
    """``GENREC_*`` settings of a feed service on this module's servers, plus ``extra``."""
    return {
        "GENREC_FEED__TRITON_GRPC_URL": triton.grpc_url,
        "GENREC_FEED__REDIS_URL": redis.url,
        "GENREC_FEED__RUN_DIR": str(run),
        "GENREC_FEED__MODEL_REPOSITORY": str(repository),
        "GENREC_FEED__TRITON_TIMEOUT_S": str(triton_timeout_s),
        "GENREC_FEED__SIGNING_KEY": SIGNING_KEY,
        **extra,
    }
