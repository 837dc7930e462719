"""The Redis clients every store here opens, with the one retry policy they share.

Reads get one retry on a connection error only: a pooled connection broken by a Redis restart is
replaced instead of failing the request (recovery without a restart). Writes are never resent by
the client library: a reply lost after a Lua script ran would otherwise apply it twice; callers
retry where the step is idempotent (an events batch's Idempotency-Key, a click token).
Redis's errors become the domain's ``StoreUnavailable`` through ``store_call``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from importlib import resources
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from genrec.feed.ports import StoreUnavailable

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class RedisClients:
    # Any, as Redis.from_url returns: redis-py types each command for its sync and asyncio
    # clients at once (Awaitable[T] | T), which mypy cannot await
    reads: Any  # one retry on a connection error
    writes: Any  # never resent by the library

    @classmethod
    def open(cls, url: str, timeout_s: float) -> RedisClients:
        def client(retries: int) -> Any:
            on_error: list[type[Exception]] = [RedisConnectionError] if retries else []
            return aioredis.Redis.from_url(
                url,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                retry=Retry(NoBackoff(), retries),
                retry_on_error=on_error,
            )

        return cls(reads=client(1), writes=client(0))

    async def close(self) -> None:
        await self.reads.aclose()
        await self.writes.aclose()


def lua_script(package: str, name: str) -> str:
    """A Lua script shipped in ``package``'s ``lua/`` folder."""
    return resources.files(package).joinpath("lua").joinpath(name).read_text()


def store_call(method: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Redis's errors become the domain's ``StoreUnavailable``."""

    @functools.wraps(method)
    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except RedisError as e:
            raise StoreUnavailable(f"{type(e).__name__}: {e}") from e

    return call
