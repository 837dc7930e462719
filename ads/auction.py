"""The ad auction: eCPM ranking and generalised second price (GSP) per click.

Rules (each tested, the invariants with hypothesis):
- a bid under the floor (reserve price per click) is never shown; neither is a bid whose pCTR is
  not a finite positive number, nor one whose eCPM = pCTR x bid is under ``min_ecpm`` (the
  relevance threshold: a weak ad never displaces organic items);
- one ad per campaign (its highest eCPM), so a campaign never competes with itself for slots;
- ranked by eCPM, highest first; ties break by item id, then campaign, so a rerun of the same
  request gives the same page;
- winner ``i`` pays per click the next ranked eligible bid's eCPM divided by its own pCTR (the
  least bid that would have kept its rank), clamped to ``[floor_cpc, own bid]``; the next bid
  counts even when it did not win a slot; the last ranked bid pays the floor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from genrec.ads.inventory import AdInventory


@dataclass(frozen=True)
class AdBid:
    item: int
    campaign: int
    bid: float  # CPC, currency units per click
    pctr: float  # calibrated click probability for this user and slot

    @property
    def ecpm(self) -> float:
        """Expected revenue per impression (the name keeps the trade's, without the x1000)."""
        return self.pctr * self.bid


@dataclass(frozen=True)
class AdWin:
    item: int
    campaign: int
    bid: float
    pctr: float
    ecpm: float
    price: float  # GSP price per click, in [floor_cpc, bid]


def make_bids(inv: AdInventory, rows: np.ndarray, pctr: np.ndarray) -> list[AdBid]:
    """The auction's bids for inventory ``rows`` scored with ``pctr`` (same order)."""
    rows = np.asarray(rows, dtype=np.int64)
    pctr = np.asarray(pctr, dtype=np.float64).reshape(-1)
    if pctr.shape != rows.shape:
        raise ValueError(f"{len(pctr)} pCTR values for {len(rows)} ads")
    return [AdBid(int(inv.item[r]), int(inv.campaign[r]), float(inv.bid_cpc[r]), float(p)) for r, p in zip(rows, pctr)]


def rank_bids(bids: Sequence[AdBid], floor_cpc: float, min_ecpm: float) -> list[AdBid]:
    """The eligible bids, best per campaign, in eCPM order (the auction before slots and prices)."""
    ok = [
        b
        for b in bids
        if math.isfinite(b.bid)
        and b.bid >= floor_cpc
        and math.isfinite(b.pctr)
        and b.pctr > 0
        and math.isfinite(b.ecpm)
        and b.ecpm >= min_ecpm
    ]
    ok.sort(key=lambda b: (-b.ecpm, b.item, b.campaign))
    seen: set[int] = set()
    ranked: list[AdBid] = []
    for b in ok:
        if b.campaign not in seen:
            seen.add(b.campaign)
            ranked.append(b)
    return ranked


def gsp_price(own: AdBid, next_ecpm: float | None, floor_cpc: float) -> float:
    """Price per click: the next eCPM / own pCTR, clamped to [floor, own bid]; the floor if none."""
    if next_ecpm is None:
        return floor_cpc
    return min(max(next_ecpm / own.pctr, floor_cpc), own.bid)


def run_auction(bids: Sequence[AdBid], slots: int, floor_cpc: float, min_ecpm: float) -> list[AdWin]:
    """At most ``slots`` winners, best eCPM first, each with its GSP price (module docstring)."""
    ranked = rank_bids(bids, floor_cpc, min_ecpm)
    wins: list[AdWin] = []
    for i, b in enumerate(ranked[: max(slots, 0)]):
        nxt = ranked[i + 1].ecpm if i + 1 < len(ranked) else None
        wins.append(AdWin(b.item, b.campaign, b.bid, b.pctr, b.ecpm, gsp_price(b, nxt, floor_cpc)))
    return wins
