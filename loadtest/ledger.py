"""Acknowledged writes, kept by a writer of its own and checked against Redis afterwards.

The chaos run (``bench/chaos.py``) needs to know whether a fault lost or doubled a write the
service had acknowledged. Locust's users cannot tell (their writes overlap and nobody keeps
them), so a ``LedgerWriter`` drives a few reserved users of its own through the feed API: a
page (ads on it count against the user's frequency caps), then one keyed ``/v1/events`` batch
that clicks an organic item and, when the page had one, an ad (the click is charged to the
campaign). A batch that gets no answer is sent again with the same ``Idempotency-Key`` until
it is acknowledged, which is what a well-behaved client does. Each batch's history events carry
a timestamp no other batch uses, so afterwards ``verify`` counts, straight from Redis, how many
times each acknowledged batch was applied: 0 is a lost write, 2 a doubled one. Every
acknowledged batch is then sent again (a client retry after the fault) and must be answered as
a replay, changing nothing.
"""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import numpy as np

from genrec.ads.pacing import utc_day
from genrec.feed.history import RECORD

TIME_TAG_STEP = 0.001  # a batch's events sit at t0 + seq * step: unique per user, never in the future


@dataclass
class AckedBatch:
    user_id: str
    key: str
    body: dict[str, Any]
    history_events: int  # events of the batch that append to the history
    tag_time: float  # the batch's unique event timestamp
    ad_clicks: list[tuple[int, str, str]]  # (campaign, charge id = token digest, day)
    sent_at: float  # unix time of the first attempt
    acked_at: float  # unix time of the acknowledgement
    attempts: int


@dataclass
class AckedPage:
    user_id: str
    day: str
    ads: list[int]  # the campaigns of the ads on the page
    acked_at: float


@dataclass
class Ledger:
    batches: list[AckedBatch] = field(default_factory=list)
    pages: list[AckedPage] = field(default_factory=list)
    unanswered: int = 0  # attempts that got no answer (retried)
    refused: list[str] = field(default_factory=list)  # 4xx answers: a client error, not retried


@dataclass(frozen=True)
class Verdict:
    """What Redis holds against what was acknowledged; ``*_lost`` / ``*_doubled`` list the
    acknowledgement times of the writes concerned (so a fault's window can claim them)."""

    batches: int
    lost: list[float]
    doubled: list[float]
    replays_changed: int  # retries of acknowledged batches that changed something (must be 0)
    charges_lost: list[float]
    caps_lost: list[float]

    def as_dict(self) -> dict[str, int]:
        return {
            "batches": self.batches,
            "lost": len(self.lost),
            "doubled": len(self.doubled),
            "replays_changed": self.replays_changed,
            "charges_lost": len(self.charges_lost),
            "caps_lost": len(self.caps_lost),
        }


def charge_id(event_token: str) -> str:
    """The idempotency id a click's charge is stored under (``EventTokens.verify``'s digest)."""
    import hashlib

    return hashlib.sha256(event_token.encode()).hexdigest()[:24]


def history_counts(records: Iterable[bytes]) -> collections.Counter[float]:
    """How many history records sit at each timestamp (rounded to a microsecond)."""
    good = [r for r in records if len(r) == RECORD.itemsize]
    if not good:
        return collections.Counter()
    times = np.frombuffer(b"".join(good), RECORD)["time"]
    return collections.Counter(round(float(t), 6) for t in times)


def applied_counts(batches: Iterable[AckedBatch], counts_by_user: dict[str, collections.Counter[float]]) -> list[tuple[AckedBatch, int]]:
    """How many times each batch's events are in its user's history (``history_events`` = once)."""
    out = []
    for b in batches:
        found = counts_by_user.get(b.user_id, collections.Counter())[round(b.tag_time, 6)]
        out.append((b, found // max(1, b.history_events)))
    return out


def cap_shortfalls(pages: Iterable[AckedPage], counters: dict[tuple[str, str, int], int]) -> list[float]:
    """Acknowledged ad impressions the cap counters do not hold: per (user, day, campaign) the
    counter must be at least the acknowledged impressions (it may be higher: a page that failed
    after its ads were recorded is counted but not acknowledged)."""
    acked: dict[tuple[str, str, int], list[float]] = collections.defaultdict(list)
    for p in pages:
        for c in p.ads:
            acked[(p.user_id, p.day, c)].append(p.acked_at)
    lost: list[float] = []
    for k, times in acked.items():
        missing = len(times) - counters.get(k, 0)
        if missing > 0:
            lost.extend(sorted(times)[-missing:])  # the latest are the ones a crash would take
    return lost


class LedgerWriter:
    """Writes through the feed API as ``users`` and keeps what was acknowledged."""

    def __init__(self, feed_url: str, users: list[str], timeout_s: float = 5.0, period_s: float = 1.0, give_up_s: float = 120.0) -> None:
        self.feed_url, self.users, self.timeout_s, self.period_s, self.give_up_s = feed_url, users, timeout_s, period_s, give_up_s
        self.ledger = Ledger()
        self._t0 = float(int(time.time()))
        self._seq = 0

    async def run(self, stop: asyncio.Event) -> Ledger:
        async with httpx.AsyncClient(base_url=self.feed_url, timeout=self.timeout_s) as client:
            await asyncio.gather(*(self._user_loop(client, u, stop) for u in self.users))
        return self.ledger

    async def _user_loop(self, client: httpx.AsyncClient, user: str, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            page = await self._page(client, user)
            if page:
                await self._write(client, user, page)
            await asyncio.sleep(max(0.0, self.period_s - (time.monotonic() - started)))

    async def _page(self, client: httpx.AsyncClient, user: str) -> list[dict[str, Any]] | None:
        now = time.time()
        try:
            r = await client.post("/v1/feed", json={"user_id": user, "count": 10})
            body = r.json()
        except (httpx.HTTPError, ValueError):
            self.ledger.unanswered += 1
            return None
        if r.status_code != 200 or body.get("code") != 0:
            return None
        items = body["data"]["items"]
        ads = [int(it["ad"]["campaign"]) for it in items if it.get("type") == "ad" and it.get("ad")]
        self.ledger.pages.append(AckedPage(user, utc_day(now), ads, time.time()))
        return items

    async def _write(self, client: httpx.AsyncClient, user: str, items: list[dict[str, Any]]) -> None:
        self._seq += 1
        tag = self._t0 + self._seq * TIME_TAG_STEP
        organic = [it for it in items if it.get("type") != "ad"]
        ads = [it for it in items if it.get("type") == "ad" and it.get("ad")]
        clicks = organic[:1] + ads[:1]
        if not clicks:
            return
        events = [{"type": "click", "item_id": it["id"], "event_token": it["tracking"]["event_token"], "timestamp": tag} for it in clicks]
        body = {"user_id": user, "events": events}
        charges = [(int(it["ad"]["campaign"]), charge_id(it["tracking"]["event_token"]), utc_day(time.time())) for it in ads[:1]]
        key, sent, attempts = uuid.uuid4().hex, time.time(), 0
        while time.time() - sent < self.give_up_s:
            attempts += 1
            outcome = await self._post(client, key, body)
            if outcome == "acked":
                self.ledger.batches.append(AckedBatch(user, key, body, len(events), tag, charges, sent, time.time(), attempts))
                return
            if outcome == "refused":
                return
            self.ledger.unanswered += 1
            await asyncio.sleep(min(1.0, 0.1 * attempts))

    async def _post(self, client: httpx.AsyncClient, key: str, body: dict[str, Any]) -> str:
        try:
            r = await client.post("/v1/events", json=body, headers={"Idempotency-Key": key})
            answer = r.json()
        except (httpx.HTTPError, ValueError):
            return "retry"
        if r.status_code == 200 and answer.get("code") == 0:
            return "acked"
        if 400 <= r.status_code < 500 and r.status_code not in (408, 429):
            self.ledger.refused.append(f"HTTP {r.status_code}: {str(answer.get('msg'))[:200]}")
            return "refused"
        return "retry"

    async def replay_all(self) -> int:
        """Send every acknowledged batch again with its key: each must be answered (a replay)."""
        failed = 0
        async with httpx.AsyncClient(base_url=self.feed_url, timeout=self.timeout_s) as client:
            for b in self.ledger.batches:
                if await self._post(client, b.key, b.body) != "acked":
                    failed += 1
        return failed


def batch_applications(ledger: Ledger, redis_url: str) -> list[int]:
    """How many times each acknowledged batch (in ledger order) is in its user's history now."""
    import redis

    from genrec.feed.event_store import user_key

    r = redis.Redis.from_url(redis_url)
    users = sorted({b.user_id for b in ledger.batches})
    counts = {u: history_counts(cast(list[bytes], r.lrange(user_key(u, "h"), 0, -1))) for u in users}
    return [n for _, n in applied_counts(ledger.batches, counts)]


def verify(ledger: Ledger, redis_url: str) -> Verdict:
    """Read Redis and compare it with the ledger (after the run, Redis up). Call it before any
    replay: a replay re-applies a batch whose idempotency record was lost with it, hiding the loss
    (``replay_check`` looks at what the replay changed)."""
    import redis

    from genrec.ads.state import AdState
    from genrec.settings import AdsConfig

    r = redis.Redis.from_url(redis_url)
    applied = list(zip(ledger.batches, batch_applications(ledger, redis_url), strict=True))
    ads = AdState.from_config(AdsConfig(), redis_url, 1.0)
    charges_lost = [b.acked_at for b in ledger.batches for (c, cid, day) in b.ad_clicks if not r.sismember(ads.charged_key(c, day), cid)]
    counters: dict[tuple[str, str, int], int] = {}
    for u, day in {(p.user_id, p.day) for p in ledger.pages if p.ads}:
        for c, n in cast(dict[bytes, bytes], r.hgetall(ads.cap_key(u, day))).items():
            counters[(u, day, int(c))] = int(n)
    return Verdict(
        batches=len(ledger.batches),
        lost=[b.acked_at for b, n in applied if n < 1],
        doubled=[b.acked_at for b, n in applied if n > 1],
        replays_changed=0,
        charges_lost=charges_lost,
        caps_lost=cap_shortfalls(ledger.pages, counters),
    )
