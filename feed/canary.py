"""Which ``recommend`` version serves a user: a canary share of users (a stable hash of the user
id, ``genrec.ads.experiments.in_canary``) gets the newest ready version, everyone else the one
before it, while Triton serves both (the version policy keeps two). A share of 0 is the
rollback: nobody reaches the newest version; 1 is the full rollout. With one ready version
there is nothing to split and the request names no version."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from genrec.ads.experiments import in_canary


def pick_version(user_id: str, ready: list[int], share: float) -> str:
    """The version to ask for: "" for the newest (what Triton and the ``feed_candidates`` ensemble
    serve by default), else the previous version's number."""
    if len(ready) < 2 or in_canary(user_id, share):
        return ""
    return str(sorted(ready)[-2])


@dataclass
class VersionRouter:
    """The ready versions, read from Triton at most every ``refresh_s`` (a version published or
    retired shows up within that time); the read happens on the request path but only when due."""

    share: float
    read_ready: Callable[[], Awaitable[list[int]]]
    refresh_s: float = 10.0
    _ready: list[int] = field(default_factory=list)
    _read_at: float = float("-inf")

    async def version_for(self, user_id: str) -> str:
        now = time.monotonic()
        if now - self._read_at >= self.refresh_s:
            self._read_at = now
            try:
                self._ready = await self.read_ready()
            except Exception:  # keep the last known versions; the recommend call reports the outage
                pass
        return pick_version(user_id, self._ready, self.share)
