"""The ad inventory and eligibility: which ads may enter a feed request's auction.

The inventory is columnar over the catalogue's ad-kind items only (row ``i`` is one ad). The
synthetic catalogue states budget and frequency cap on each ad row, while Redis counts spend
and impressions per campaign, so the campaign-level values are derived here once:

- a campaign's daily budget is the **largest** budget among its ads (the advertiser funds the
  campaign once; the rows restate it, and taking the max never under-serves a campaign whose
  rows disagree);
- a campaign's frequency cap is the **smallest** cap among its ads (the strictest promise any of
  its ads made to the user; a cap of 0 means the campaign is never shown).

Rows that cannot be auctioned (a non-finite or non-positive bid or budget, no campaign) are left
out of the inventory, so every row the feed sees is servable.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genrec.data.schema import ItemKind, ItemMetadata

# the columns item_table.npz must carry for ads (genrec/train.py writes them)
AD_COLUMNS = ("kind", "category", "advertiser", "campaign", "bid_cpc", "daily_budget", "frequency_cap", "target_categories")


@dataclass(frozen=True, eq=False)
class AdInventory:
    item: np.ndarray  # (A,) int64, catalogue item id
    campaign: np.ndarray  # (A,) int64
    advertiser: np.ndarray  # (A,) int64
    bid_cpc: np.ndarray  # (A,) float64, currency units per click
    daily_budget: np.ndarray  # (A,) float64, as stated on the row (see campaign_budget)
    frequency_cap: np.ndarray  # (A,) int64, as stated on the row (see campaign_cap)
    category: np.ndarray  # (A,) int64, the ad's own category
    target_categories: np.ndarray  # (A, 3) int64, -1 padded
    # campaign-level views, derived in __post_init__
    campaigns: np.ndarray = field(init=False, repr=False)  # (C,) int64, sorted
    _budget: np.ndarray = field(init=False, repr=False)  # (C,) max budget per campaign
    _cap: np.ndarray = field(init=False, repr=False)  # (C,) min cap per campaign
    row_cap: np.ndarray = field(init=False, repr=False)  # (A,) the campaign cap that applies to each row
    _row_of_item: dict[int, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n = self.item.shape[0]
        for name in ("campaign", "advertiser", "bid_cpc", "daily_budget", "frequency_cap", "category"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"AdInventory.{name} has shape {getattr(self, name).shape}, expected ({n},)")
        if self.target_categories.ndim != 2 or self.target_categories.shape[0] != n:
            raise ValueError(f"AdInventory.target_categories has shape {self.target_categories.shape}, expected ({n}, k)")
        campaigns, inverse = np.unique(self.campaign, return_inverse=True)
        budget = np.full(len(campaigns), -np.inf)
        np.maximum.at(budget, inverse, self.daily_budget)
        cap = np.full(len(campaigns), np.iinfo(np.int64).max)
        np.minimum.at(cap, inverse, self.frequency_cap)
        object.__setattr__(self, "campaigns", campaigns.astype(np.int64))
        object.__setattr__(self, "_budget", budget)
        object.__setattr__(self, "_cap", cap)
        object.__setattr__(self, "row_cap", cap[inverse.reshape(-1)].astype(np.int64))
        object.__setattr__(self, "_row_of_item", {int(i): r for r, i in enumerate(self.item)})

    def __len__(self) -> int:
        return int(self.item.shape[0])

    @classmethod
    def from_columns(cls, columns: Mapping[str, np.ndarray]) -> AdInventory:
        """From per-catalogue-item columns (every item, ads and others), keeping servable ad rows."""
        kind = np.asarray(columns["kind"])
        bid = np.asarray(columns["bid_cpc"], dtype=np.float64)
        budget = np.asarray(columns["daily_budget"], dtype=np.float64)
        campaign = np.asarray(columns["campaign"], dtype=np.int64)
        with np.errstate(invalid="ignore"):
            keep = (kind == ItemKind.AD) & np.isfinite(bid) & (bid > 0) & np.isfinite(budget) & (budget > 0) & (campaign >= 0)
        rows = np.flatnonzero(keep)
        return cls(
            item=rows.astype(np.int64),
            campaign=campaign[rows],
            advertiser=np.asarray(columns["advertiser"], dtype=np.int64)[rows],
            bid_cpc=bid[rows],
            daily_budget=budget[rows],
            frequency_cap=np.asarray(columns["frequency_cap"], dtype=np.int64)[rows],
            category=np.asarray(columns["category"], dtype=np.int64)[rows],
            target_categories=np.asarray(columns["target_categories"], dtype=np.int64)[rows],
        )

    @classmethod
    def from_item_table(cls, source: str | Path | Mapping[str, np.ndarray]) -> AdInventory:
        """From a run's ``item_table.npz`` (its path, its run folder, or the loaded mapping)."""
        if isinstance(source, (str, Path)):
            path = Path(source)
            if path.is_dir():
                path = path / "item_table.npz"
            with np.load(path) as z:
                columns = {k: z[k] for k in z.files}
            where = str(path)
        else:
            columns, where = dict(source), "the item table"
        missing = [c for c in AD_COLUMNS if c not in columns]
        if missing:
            raise ValueError(
                f"{where} lacks the ad columns {missing}: it was written before ads were added; "
                "retrain the run with genrec-train to serve ads"
            )
        return cls.from_columns(columns)

    @classmethod
    def from_metadata(cls, meta: ItemMetadata) -> AdInventory:
        return cls.from_columns({c: getattr(meta, c) for c in AD_COLUMNS})

    def row(self, item: int) -> int:
        """The inventory row of a catalogue item id (KeyError if it is not a servable ad)."""
        return self._row_of_item[int(item)]

    def campaign_budget(self, campaign: int) -> float:
        """The campaign's daily budget: the largest budget among its ads (module docstring)."""
        return float(self._budget[self._campaign_index(campaign)])

    def campaign_cap(self, campaign: int) -> int:
        """The campaign's impressions per user per day: the smallest cap among its ads."""
        return int(self._cap[self._campaign_index(campaign)])

    def _campaign_index(self, campaign: int) -> int:
        k = int(np.searchsorted(self.campaigns, campaign))
        if k >= len(self.campaigns) or self.campaigns[k] != campaign:
            raise KeyError(f"campaign {campaign} is not in the ad inventory")
        return k

    def matching(self, user_categories: Collection[int]) -> np.ndarray:
        """Rows of the ads whose targeting intersects the user's recent categories, ascending.

        A user with no recent categories (cold start) matches every ad: run-of-network, since
        there is nothing to target on and an empty ad slot earns nothing.
        """
        if len(user_categories) == 0:
            return np.arange(len(self), dtype=np.int64)
        wanted = np.fromiter((int(c) for c in user_categories), dtype=np.int64)
        hit = np.isin(self.target_categories, wanted[wanted >= 0]).any(axis=1)
        return np.flatnonzero(hit).astype(np.int64)


def eligible(
    inv: AdInventory,
    idx: np.ndarray,
    *,
    cap_counts: Mapping[int, int],
    exhausted: Collection[int],
    throttled: Collection[int],
    max_candidates: int = 256,
) -> np.ndarray:
    """The rows of ``idx`` that may enter this request's auction, highest bid first.

    Dropped: an ad whose campaign has shown this user ``cap_counts[campaign] >= cap`` times
    today, whose campaign is out of budget (``exhausted``), or that pacing holds back for this
    request (``throttled``, campaign ids). At most ``max_candidates`` are kept (AdsConfig, the
    pCTR batch cap): the pCTR is not known before the model scores them, and the bid is the only
    value signal at hand (at equal pCTR a higher bid means a higher eCPM). Ties break by item id
    so the choice is deterministic.
    """
    idx = np.asarray(idx, dtype=np.int64)
    if idx.size == 0 or max_candidates <= 0:
        return idx[:0]
    camp = inv.campaign[idx]
    shown = np.fromiter((int(cap_counts.get(int(c), 0)) for c in camp), dtype=np.int64, count=len(camp))
    blocked = set(int(c) for c in exhausted) | set(int(c) for c in throttled)
    ok = shown < inv.row_cap[idx]
    if blocked:
        ok &= ~np.isin(camp, np.fromiter(blocked, dtype=np.int64))
    kept = idx[ok]
    order = np.lexsort((inv.item[kept], -inv.bid_cpc[kept]))
    return kept[order[:max_candidates]]
