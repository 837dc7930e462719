"""Ad density: where the auction's winners go on a blended page of content and products.

Positions are session positions (``offset``, ``offset + 1``, ... on the page that starts at
``offset``); the rules hold over the whole session, across pages:

- at most ``first_screen_max_ads`` ads among positions ``[0, first_screen)``;
- any ``ad_every`` consecutive positions hold at most one ad (two ads are at least ``ad_every``
  apart), counted from the previous page's last ad (``last_ad``); ``ad_every <= 0`` serves no ads;
- never two ads adjacent, never an ad next to a product, the previous page's last item included
  (``last_product == offset - 1`` forbids an ad at ``offset``);
- an ad never takes a page's last position: the next page's first item is not known yet and may
  be a product (or the end of the feed). So a one-item page carries no ad.

Ads go in best eCPM first, each at the earliest position where the page with it still obeys
every rule; organic items shift down (their order kept) and the page is cut back to ``count``,
so an ad costs the page's last organic item. An ad with no such position is dropped.

Earlier pages are known only through ``last_ad``: for the first-screen rule they are counted as
the most ads that could have been served before ``last_ad`` at the ``ad_every`` spacing, which is
exact for the default of one ad in the first screen and never undercounts otherwise.

The feed passes the final page (ads included) to ``last_ad_position`` and
``genrec.feed.blend.last_product_position`` to carry ``last_ad`` / ``last_product`` to the next page.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from genrec.ads.auction import AdWin
from genrec.feed.blend import Placed
from genrec.settings import AdsConfig


@dataclass(frozen=True)
class DensityRules:
    first_screen: int
    first_screen_max_ads: int
    ad_every: int

    @classmethod
    def from_config(cls, cfg: AdsConfig, ad_every: int | None = None) -> DensityRules:
        """From the settings; ``ad_every`` overrides the default (an experiment bucket's ad load)."""
        return cls(cfg.first_screen, cfg.first_screen_max_ads, cfg.ad_every if ad_every is None else ad_every)

    @property
    def gap(self) -> int:
        """The least distance between two ads: ``ad_every``, and never adjacent."""
        return max(self.ad_every, 2)


def _earlier_first_screen_ads(last_ad: int | None, rules: DensityRules) -> int:
    """The most ads that earlier pages can have put in the first screen, given their last ad."""
    if last_ad is None:
        return 0
    return sum(1 for p in range(last_ad, -1, -rules.gap) if p < rules.first_screen)


def _page_ok(page: list[Placed], offset: int, last_ad: int | None, last_product: int | None, rules: DensityRules) -> bool:
    ads = [i for i, p in enumerate(page) if p.type == "ad"]
    if not ads:
        return True
    if ads[-1] == len(page) - 1:
        return False
    for i in ads:
        if i > 0 and page[i - 1].type in ("ad", "product"):
            return False
        if i == 0 and offset - 1 in (last_ad, last_product):
            return False
        if page[i + 1].type in ("ad", "product"):
            return False
    positions = ([last_ad] if last_ad is not None else []) + [offset + i for i in ads]
    if any(b - a < rules.gap for a, b in zip(positions, positions[1:])):
        return False
    in_screen = sum(1 for i in ads if offset + i < rules.first_screen)
    return in_screen == 0 or _earlier_first_screen_ads(last_ad, rules) + in_screen <= rules.first_screen_max_ads


def place_ads(
    organic: Sequence[Placed],
    wins: Sequence[AdWin],
    count: int,
    offset: int,
    last_ad: int | None,
    last_product: int | None,
    rules: DensityRules,
    reason: str = "Sponsored",
) -> list[Placed]:
    """The final page: ``organic`` (already blended, in order) with the placeable ``wins``.

    An ad is ``Placed(item, "ad", ecpm, position, reason)``; its price stays on its ``AdWin``.
    The page has ``min(count, len(organic) + ads placed)`` items at positions ``offset, ...``.
    """
    if count <= 0:
        return []
    page = list(organic[:count])
    if rules.ad_every > 0:
        taken = {p.item_id for p in page}
        for w in sorted(wins, key=lambda w: (-w.ecpm, w.item)):
            if w.item in taken:
                continue
            ad = Placed(w.item, "ad", w.ecpm, 0, reason)
            n_ads = sum(1 for p in page if p.type == "ad") + 1
            for k in range(min(len(page) + 1, count)):
                trial = [*page[:k], ad, *page[k:]][:count]
                if sum(1 for p in trial if p.type == "ad") == n_ads and _page_ok(trial, offset, last_ad, last_product, rules):
                    page = trial
                    taken.add(w.item)
                    break
    return [replace(p, position=offset + i) for i, p in enumerate(page)]


def last_ad_position(page: Sequence[Placed], previous: int | None) -> int | None:
    """The session position of the last ad served so far (``previous`` if this page has none)."""
    positions = [p.position for p in page if p.type == "ad"]
    return positions[-1] if positions else previous
