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
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
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


def route_for(user_id: str, ready: dict[str, list[int]], share: float, pairs: Callable[[int], int | None]) -> Route:
    recs, ctrs = sorted(ready.get(RECOMMEND, [])), sorted(ready.get(AD_CTR, []))
    if not recs:
        return NEWEST
    version = pick_version(user_id, recs, share)
    rec = int(version) if version else recs[-1]
    paired = pairs(rec)
    newest = not version
    if paired is None:  # a repository of before the pairing, or not readable here: trust only newest-with-newest
        return Route(version, "" if newest else None, newest, str(rec))
    if paired not in ctrs:
        return Route(version, None, False, str(rec))
    return Route(version, str(paired), newest and bool(ctrs) and paired == ctrs[-1], str(rec))


@dataclass
class VersionRouter:
    """The ready versions, read from Triton at most every ``refresh_s`` (a version published or
    retired shows up within that time); the read happens on the request path but only when due.
    Until a first read succeeds nobody is routed to a named version, and with ``share`` 0 (the
    rollback) the newest is not trusted either: ads are then off for everyone (no pairing known)."""

    share: float
    read_ready: Callable[[], Awaitable[dict[str, list[int]]]]
    repository: Path | None = None
    refresh_s: float = 10.0
    _ready: dict[str, list[int]] = field(default_factory=dict)
    _pairs: dict[int, int | None] = field(default_factory=dict)
    _read_at: float = float("-inf")

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
            except Exception:  # keep the last known versions; the recommend call reports the outage
                pass
        if not self._ready.get(RECOMMEND):
            return NEWEST if self.share > 0 else Route("", None, False, "newest")
        return route_for(user_id, self._ready, self.share, self._pair)
