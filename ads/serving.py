"""One feed request's ads, end to end: targeting -> eligibility (caps, budgets, pacing, from one
Redis read) -> pCTR features -> (Triton scores them) -> GSP auction -> density placement -> the
atomic serve record that enforces the caps.

The steps are split around the Triton call so the feed can score the ads in the same round trip
as its organic candidates (``prepare`` before, ``fill`` after). Ads fail closed: when Redis does
not answer, or the pCTR is missing, the page is served without ads (``AdOutcome.unavailable``);
an ad is shown only after ``record_served`` counted it under its cap, so a Redis error after the
auction removes the ads too. ``AdStore`` is ``ads.state.AdState`` in production, a fake in unit
tests.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from genrec.ads.auction import AdWin, make_bids, rank_bids, run_auction
from genrec.ads.experiments import ad_load
from genrec.ads.inventory import AdInventory, eligible
from genrec.ads.pacing import TrafficCurve, day_start, target_spend, utc_day
from genrec.ads.placement import DensityRules, place_ads
from genrec.ads.state import AdSnapshot, ServedAd
from genrec.feed.blend import Placed
from genrec.feed.ports import StoreUnavailable
from genrec.settings import AdsConfig

log = logging.getLogger("genrec.ads")


class AdStore(Protocol):
    async def snapshot(
        self, user_id: str, campaigns: Sequence[int], day: str, now: float, budgets: Mapping[int, float] | None = None
    ) -> AdSnapshot: ...

    async def record_served(self, user_id: str, day: str, ads: Sequence[ServedAd], ttl_s: int, now: float | None = None) -> list[bool]: ...


@dataclass(frozen=True)
class AdCandidates:
    """What enters this request's auction; ``features`` go to the pCTR model."""

    rows: np.ndarray  # inventory rows, highest bid first
    features: np.ndarray  # (len(rows), F) float32
    bucket: int
    ad_every: int
    day: str
    matched: int  # ads whose targeting matched, before caps, budgets and pacing
    refused: dict[str, int] = field(default_factory=dict)  # reason -> campaigns left out
    pacing_ratios: list[float] = field(default_factory=list)  # actual / target spend per candidate campaign


@dataclass
class AdOutcome:
    """What happened to the ads of one page (the feed turns it into metrics and the response)."""

    status: str  # "filled" | "empty" | "no_candidates" | "unavailable" | "off"
    eligible: int = 0
    wins: dict[int, AdWin] = field(default_factory=dict)  # item -> its auction result, for placed ads
    placed: int = 0  # ads the density rules placed, before the atomic cap record
    cap_races: int = 0  # ads refused by the atomic serve record (a concurrent feed used the cap)


FeatureRows = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (history items, ad item ids) -> (n, F)


@dataclass
class AdServer:
    inventory: AdInventory
    cfg: AdsConfig
    store: AdStore
    feature_rows: FeatureRows
    category: np.ndarray  # (n_items,) the catalogue's categories (targeting)
    curve: TrafficCurve = field(default_factory=TrafficCurve)
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    recent_events: int = 50  # the history window targeting looks at

    def bucket(self, user_id: str, requested: str | None) -> tuple[int, int]:
        """(bucket, ad_every) of this request. ``requested`` is the request's ``ab_bucket``: a
        number names a bucket of ``AdsConfig.ab_buckets`` (out of range: ValueError naming the
        range); a name (an experiment arm, e.g. "b") is hashed to a bucket, the same one in every
        replica; absent, the user's stable hash picks it."""
        if requested is None:
            return ad_load(self.cfg, user_id)
        if requested.isdigit():
            return ad_load(self.cfg, user_id, int(requested))
        return ad_load(self.cfg, f"ab-name:{requested}")

    async def prepare(
        self, user_id: str, history_items: np.ndarray, bucket: int, ad_every: int, now: float, excluded: Collection[int] = ()
    ) -> AdCandidates | None:
        """The eligible ads and their pCTR features, or None when there is nothing to auction.
        ``excluded``: items this session already showed, or the user hid: never auctioned again.
        Raises StoreUnavailable when Redis does not answer (the caller serves no ads)."""
        if not self.cfg.enabled or ad_every <= 0 or len(self.inventory) == 0:
            return None
        recent = np.asarray(history_items[-self.recent_events :], dtype=np.int64)
        cats = set(int(c) for c in self.category[recent]) if recent.size else set()
        matched = self.inventory.matching(cats)
        if len(excluded):
            matched = matched[~np.isin(self.inventory.item[matched], np.fromiter((int(i) for i in excluded), np.int64))]
        if matched.size == 0:
            return None
        # the snapshot is per campaign: look at the best-bid rows first, at most a few times the pCTR batch
        matched_by_bid = matched[np.lexsort((self.inventory.item[matched], -self.inventory.bid_cpc[matched]))]
        pool = matched_by_bid[: 4 * self.cfg.max_candidates]
        campaigns = sorted({int(c) for c in self.inventory.campaign[pool]})
        budgets = {c: self.inventory.campaign_budget(c) for c in campaigns}
        day = utc_day(now)
        snap = await self.store.snapshot(user_id, campaigns, day, now, budgets)
        exhausted = {c for c in campaigns if snap.spend.get(c, 0.0) >= budgets[c]}
        throttled = {c for c in campaigns if c not in exhausted and self.rng.random() >= snap.serve_probability.get(c, 1.0)}
        capped = {c for c in campaigns if snap.cap_counts.get(c, 0) >= self.inventory.campaign_cap(c)}
        rows = eligible(
            self.inventory,
            pool,
            cap_counts=snap.cap_counts,
            exhausted=exhausted,
            throttled=throttled,
            max_candidates=self.cfg.max_candidates,
        )
        seconds = now - day_start(day)
        ratios = []
        for c in campaigns:
            target = target_spend(budgets[c], self.curve, seconds)
            if target > 0:
                ratios.append(snap.spend.get(c, 0.0) / target)
        refused = {"frequency_cap": len(capped), "budget": len(exhausted), "pacing": len(throttled - capped)}
        if rows.size == 0:
            return AdCandidates(rows, np.zeros((0, 0), np.float32), bucket, ad_every, day, int(matched.size), refused, ratios)
        features = self.feature_rows(np.asarray(history_items, dtype=np.int64), self.inventory.item[rows])
        return AdCandidates(rows, features, bucket, ad_every, day, int(matched.size), refused, ratios)

    async def fill(
        self,
        user_id: str,
        organic: Sequence[Placed],
        cands: AdCandidates,
        pctr: np.ndarray,
        count: int,
        offset: int,
        last_ad: int | None,
        last_product: int | None,
        trace_id: str,
        now: float,
    ) -> tuple[list[Placed], AdOutcome]:
        """The page with its ads, and what happened. ``organic``: the blended page, with a few
        spare items beyond ``count`` (an ad pushes the last organic item off the page, and a
        refused ad gives its position back to the next spare content item)."""
        if pctr.shape != (cands.rows.size,) or not np.all(np.isfinite(pctr)):
            log.warning("pCTR missing or malformed for %d ads: serving no ads", cands.rows.size)
            return list(organic[:count]), AdOutcome("unavailable")
        bids = make_bids(self.inventory, cands.rows, pctr)
        ranked = rank_bids(bids, self.cfg.floor_cpc, self.cfg.min_ecpm)
        rules = DensityRules.from_config(self.cfg, ad_every=cands.ad_every)
        slots = max(1, math.ceil(count / rules.gap))
        wins = run_auction(bids, slots, self.cfg.floor_cpc, self.cfg.min_ecpm)
        outcome = AdOutcome("empty", eligible=len(ranked))
        if not wins:
            return list(organic[:count]), outcome
        page = place_ads(organic, wins, count, offset, last_ad, last_product, rules)
        by_item = {w.item: w for w in wins}
        placed = [p for p in page if p.type == "ad"]
        outcome.placed = len(placed)
        if not placed:
            return page, outcome
        served = [
            ServedAd(
                by_item[p.item_id].campaign,
                self.inventory.campaign_cap(by_item[p.item_id].campaign),
                p.item_id,
                by_item[p.item_id].price,
                cands.bucket,
                trace_id,
            )
            for p in placed
        ]
        try:
            accepted = await self.store.record_served(user_id, cands.day, served, self.cfg.state_ttl_s, now)
        except StoreUnavailable:
            return _without_ads(page, set(), organic), AdOutcome("unavailable", eligible=len(ranked))
        kept = {p.item_id for p, ok in zip(placed, accepted) if ok}
        outcome.cap_races = len(placed) - len(kept)
        outcome.wins = {i: by_item[i] for i in kept}
        outcome.status = "filled" if kept else "empty"
        return _without_ads(page, kept, organic) if outcome.cap_races else page, outcome


def _without_ads(page: Sequence[Placed], keep: set[int], organic: Sequence[Placed]) -> list[Placed]:
    """``page`` with every ad not in ``keep`` replaced in place by the next spare content item
    (content never breaks a density or product rule); with no spare left the page ends there."""
    used = {p.item_id for p in page}
    spares = iter(p for p in organic if p.type == "content" and p.item_id not in used)
    out: list[Placed] = []
    for p in page:
        if p.type != "ad" or p.item_id in keep:
            out.append(p)
            continue
        spare = next(spares, None)
        if spare is None:
            break
        out.append(replace(spare, position=p.position))
    return out
