"""Which ``recommend`` version serves a user, and which ``ad_ctr`` version scores its ads.

A canary share of users (a stable hash of the user id, ``genrec.ads.experiments.in_canary``)
gets the newest ready ``recommend`` version, everyone else the one before it, while Triton
serves both (the version policy keeps two). A share of 0 is the rollback: nobody reaches the
newest version; 1 is the full rollout. With one ready version there is nothing to split.

The pCTR model reads ``recommend``'s user vector, so each ``recommend`` version is scored with
the ``ad_ctr`` version published with it (``ad_ctr_version`` in the recommend version's
``manifest.json``). The ``feed_candidates`` ensemble pairs the newest of each, which is right
only when the newest ``recommend`` was published with the newest ``ad_ctr`` (not after a
rollback of one of them, nor for the canary's control group); otherwise the feed makes the two
calls itself with both versions named. A version whose pairing is unknown gets no ads (closed).

Deploy warm-up: a ``recommend`` version that becomes ready while the router is running is
*held* (nobody is routed to it) until its warm-up (``warmup.py``: its encoder states built for
the recently active users) finished or ran out of its budget; meanwhile everyone is on the
version before it, named explicitly ("" would be Triton's newest, the held one), through the
two-call ads path (the ``feed_candidates`` ensemble pairs the newest). The versions ready at the
router's first read are served as they are (a restarted feed process finds Triton warm).
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from genrec.ads.experiments import in_canary

RECOMMEND = "recommend"
AD_CTR = "ad_ctr"


@dataclass(frozen=True)
class Route:
    recommend: str  # "" = the newest (Triton's default), else the previous version's number
    ad_ctr: str | None  # the version scoring this user's ads on the two-call path; None: no ads
    ensemble: bool  # feed_candidates pairs the right versions for this user
    label: str  # the recommend version number for metrics ("newest" before any is known)


NEWEST = Route("", "", True, "newest")


def pick_version(user_id: str, ready: list[int], share: float) -> str:
    """The version to ask for: "" for the newest (what Triton and the ``feed_candidates`` ensemble
    serve by default), else the previous version's number."""
    if len(ready) < 2 or in_canary(user_id, share):
        return ""
    return str(sorted(ready)[-2])


def paired_ad_ctr(repository: Path | None, recommend_version: int) -> int | None:
    """The ``ad_ctr`` version published with a ``recommend`` version (None: unknown)."""
    if repository is None:
        return None
    try:
        manifest = json.loads((Path(repository) / RECOMMEND / str(recommend_version) / "manifest.json").read_text())
        return int(manifest["ad_ctr_version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def route_for(
    user_id: str,
    ready: dict[str, list[int]],
    share: float,
    pairs: Callable[[int], int | None],
    held: Collection[int] = (),
) -> Route:
    """``held``: recommend versions being warmed, routed to nobody (unless nothing else is ready)."""
    loaded, ctrs = sorted(ready.get(RECOMMEND, [])), sorted(ready.get(AD_CTR, []))
    if not loaded:
        return NEWEST
    recs = [v for v in loaded if v not in held] or loaded
    version = pick_version(user_id, recs, share)
    rec = int(version) if version else recs[-1]
    newest = rec == loaded[-1]  # Triton's newest: the only one "" and the ensemble reach
    version = "" if newest else str(rec)
    paired = pairs(rec)
    if paired is None:  # a repository of before the pairing, or not readable here: trust only newest-with-newest
        return Route(version, "" if newest else None, newest, str(rec))
    if paired not in ctrs:
        return Route(version, None, False, str(rec))
    return Route(version, str(paired), newest and bool(ctrs) and paired == ctrs[-1], str(rec))


def newly_ready(released: int | None, ready: list[int]) -> list[int]:
    """The recommend versions to hold for a warm-up: those newer than the highest version ever
    released to traffic, while a released one is ready to serve meanwhile. An older version that
    comes back (Triton reloads every version of a model on each load) is never held: holding it
    could leave only the version being warmed to route to. ``released`` None: the first read."""
    if released is None:
        return []
    new = [v for v in ready if v > released]
    return new if len(ready) > len(new) else []


@dataclass
class VersionRouter:
    """The ready versions, read from Triton at most every ``refresh_s`` (a version published or
    retired shows up within that time); the read happens on the request path but only when due.
    Until a first read succeeds nobody is routed to a named version, and with ``share`` 0 (the
    rollback) the newest is not trusted either: ads are then off for everyone (no pairing known).

    ``warm``: started in the background for each newly ready recommend version, which is held
    until it returns (or raises); None: no hold. Between Triton loading a version and the
    router's next read (up to ``refresh_s``), requests that ask for "" still reach it."""

    share: float
    read_ready: Callable[[], Awaitable[dict[str, list[int]]]]
    repository: Path | None = None
    refresh_s: float = 10.0
    warm: Callable[[int], Awaitable[object]] | None = None
    _ready: dict[str, list[int]] = field(default_factory=dict)
    _pairs: dict[int, int | None] = field(default_factory=dict)
    _read_at: float = float("-inf")
    _released: int | None = None  # the highest recommend version released to traffic (None: no read yet)
    _warming: dict[int, asyncio.Task[object]] = field(default_factory=dict)

    @property
    def held(self) -> frozenset[int]:
        return frozenset(self._warming)

    def _release(self, version: int, task: asyncio.Task[object]) -> None:
        if task.cancelled():
            return  # retired or reloaded while warming: held (and warmed) again if it comes back
        task.exception()  # retrieved: a failed warm-up releases the version like a finished one
        if self._warming.get(version) is task:
            del self._warming[version]
        self._released = version if self._released is None else max(self._released, version)

    def _on_read(self, ready: dict[str, list[int]]) -> None:
        recs = sorted(ready.get(RECOMMEND, []))
        # a warming version not ready any more was retired, or is being reloaded: Triton reloads
        # every version of a model on each load (genrec-publish loads recommend, then the
        # ensemble, which loads it again), and a reload starts with empty caches. Stop; being
        # newer than every released version, it is held and warmed again when it is back.
        for v in [v for v in self._warming if v not in recs]:
            self._warming.pop(v).cancel()
        if self._released is None:
            if recs:  # the first read: what is ready is served as found
                self._released = recs[-1]
            return
        if self.warm is not None:
            for v in newly_ready(self._released, recs):
                if v not in self._warming:
                    task = asyncio.ensure_future(self.warm(v))
                    task.add_done_callback(functools.partial(self._release, v))
                    self._warming[v] = task
        elif recs:
            self._released = max(self._released, recs[-1])

    def _pair(self, version: int) -> int | None:
        if version not in self._pairs:
            self._pairs[version] = paired_ad_ctr(self.repository, version)
        return self._pairs[version]

    async def route(self, user_id: str) -> Route:
        now = time.monotonic()
        if now - self._read_at >= self.refresh_s:
            self._read_at = now
            try:
                self._ready = await self.read_ready()
                self._on_read(self._ready)
            except Exception:  # keep the last known versions; the recommend call reports the outage
                pass
        if not self._ready.get(RECOMMEND):
            return NEWEST if self.share > 0 else Route("", None, False, "newest")
        return route_for(user_id, self._ready, self.share, self._pair, self.held)
