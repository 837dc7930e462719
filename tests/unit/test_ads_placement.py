"""Ad density over session positions: first screen, spacing, adjacency, across pages."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from genrec.ads.auction import AdWin
from genrec.ads.placement import DensityRules, last_ad_position, place_ads
from genrec.feed.blend import Placed, last_product_position
from genrec.settings import AdsConfig

RULES = DensityRules(first_screen=5, first_screen_max_ads=1, ad_every=5)


def _organic(types: str, offset: int = 0, start_id: int = 0) -> list[Placed]:
    """'c' content, 'p' product, in order from ``offset``."""
    kind = {"c": "content", "p": "product"}
    return [Placed(start_id + i, kind[t], 1.0 - i / 100, offset + i, "r") for i, t in enumerate(types)]


def _win(item: int, ecpm: float, campaign: int | None = None) -> AdWin:
    return AdWin(item, item if campaign is None else campaign, 1.0, ecpm, ecpm, 0.5)


def _types(page: list[Placed]) -> str:
    return "".join(p.type[0] for p in page)  # c / p / a


def test_from_config():
    cfg = AdsConfig()
    assert DensityRules.from_config(cfg) == DensityRules(cfg.first_screen, cfg.first_screen_max_ads, cfg.ad_every)
    assert DensityRules.from_config(cfg, ad_every=8).ad_every == 8


def test_best_ad_takes_the_earliest_slot_then_spacing():
    page = place_ads(_organic("c" * 10), [_win(100, 0.01), _win(101, 0.05)], 10, 0, None, None, RULES)
    assert _types(page) == "accccacccc"
    assert [p.item_id for p in page if p.type == "ad"] == [101, 100]  # best eCPM first
    assert [p.position for p in page] == list(range(10))
    assert [p.item_id for p in page if p.type != "ad"] == list(range(8))  # the last two organic items cut
    assert page[0].score == 0.05 and page[0].reason == "Sponsored"


def test_first_screen_cap():
    rules = DensityRules(first_screen=5, first_screen_max_ads=1, ad_every=2)
    page = place_ads(_organic("c" * 8), [_win(100, 0.3), _win(101, 0.2), _win(102, 0.1)], 8, 0, None, None, rules)
    assert _types(page) == "accccacc"  # one in [0, 5), the next at 5; a third at 7 would be the page's last
    rules2 = DensityRules(first_screen=5, first_screen_max_ads=2, ad_every=2)
    page2 = place_ads(_organic("c" * 8), [_win(100, 0.3), _win(101, 0.2), _win(102, 0.1)], 8, 0, None, None, rules2)
    assert [p.position for p in page2 if p.type == "ad"] == [0, 2, 5]


def test_never_next_to_a_product():
    page = place_ads(_organic("pcpccc"), [_win(100, 0.1)], 6, 0, None, None, RULES)
    assert _types(page) == "pcpcac"  # the first slot with content on both sides


def test_previous_page_product_forbids_the_first_slot():
    page = place_ads(_organic("cccccc", offset=10), [_win(100, 0.1)], 6, 10, None, 9, RULES)
    assert [p.position for p in page if p.type == "ad"] == [11]
    page = place_ads(_organic("cccccc", offset=10), [_win(100, 0.1)], 6, 10, None, 8, RULES)
    assert [p.position for p in page if p.type == "ad"] == [10]


def test_spacing_counts_from_the_previous_page():
    page = place_ads(_organic("c" * 8, offset=10), [_win(100, 0.1)], 8, 10, 8, None, RULES)
    assert [p.position for p in page if p.type == "ad"] == [13]  # 8 + ad_every
    assert last_ad_position(page, 8) == 13
    assert last_ad_position(page[:2], 8) == 8


def test_first_screen_counts_the_previous_page():
    # the first page (0..2) served an ad at 0; the second page starts inside the first screen
    rules = DensityRules(first_screen=5, first_screen_max_ads=1, ad_every=2)
    page = place_ads(_organic("cccc", offset=3), [_win(100, 0.1)], 4, 3, 0, None, rules)
    assert [p.position for p in page if p.type == "ad"] == [5]


def test_no_ad_in_the_last_slot_nor_on_one_item_pages():
    assert _types(place_ads(_organic("c"), [_win(100, 0.1)], 1, 0, None, None, RULES)) == "c"
    assert _types(place_ads(_organic("c"), [_win(100, 0.1)], 5, 0, None, None, RULES)) == "ac"
    assert _types(place_ads(_organic("pc"), [_win(100, 0.1)], 5, 0, None, None, RULES)) == "pc"  # no slot clear of the product
    assert _types(place_ads([], [_win(100, 0.1)], 5, 0, None, None, RULES)) == ""


def test_no_ads_when_switched_off_or_no_room():
    assert _types(place_ads(_organic("c" * 6), [_win(100, 0.1)], 6, 0, None, None, DensityRules(5, 1, 0))) == "cccccc"
    assert _types(place_ads(_organic("c" * 6), [_win(100, 0.1)], 6, 0, None, None, DensityRules(5, 0, 5))) == "cccccc"
    assert place_ads(_organic("c" * 6), [_win(100, 0.1)], 0, 0, None, None, RULES) == []


def test_duplicate_wins_are_placed_once():
    page = place_ads(_organic("c" * 12), [_win(100, 0.1), _win(100, 0.1)], 12, 0, None, None, DensityRules(5, 1, 2))
    assert [p.item_id for p in page].count(100) == 1


# --- properties over whole sessions ---------------------------------------------------------

rules_st = st.builds(DensityRules, first_screen=st.integers(0, 8), first_screen_max_ads=st.integers(0, 3), ad_every=st.integers(-1, 7))
page_st = st.tuples(
    st.integers(1, 12),  # count
    st.text(alphabet="cp", max_size=14),  # organic types (may exceed count: blend gives at most count)
    st.lists(st.floats(0.001, 1.0), max_size=4),  # the wins' eCPMs
)


@settings(max_examples=400, deadline=None)
@given(rules=rules_st, pages=st.lists(page_st, min_size=1, max_size=6))
def test_density_rules_hold_over_the_session(rules, pages):
    ids = itertools.count()
    session: list[Placed] = []
    offset, last_ad, last_product = 0, None, None
    for count, types, ecpms in pages:
        types = types[:count]
        organic = [Placed(next(ids), {"c": "content", "p": "product"}[t], 0.5, offset + i, "r") for i, t in enumerate(types)]
        wins = [AdWin(next(ids), k, 1.0, e, e, 0.5) for k, e in enumerate(ecpms)]
        page = place_ads(organic, wins, count, offset, last_ad, last_product, rules)
        ads = [p for p in page if p.type == "ad"]
        assert len(page) == min(count, len(organic) + len(ads))
        assert [p.position for p in page] == list(range(offset, offset + len(page)))
        kept = [p.item_id for p in page if p.type != "ad"]
        assert kept == [p.item_id for p in organic[: len(kept)]], "organic order changed or a gap"
        assert {p.item_id for p in ads} <= {w.item for w in wins}
        session += page
        offset += len(page)
        last_ad = last_ad_position(page, last_ad)
        last_product = last_product_position(page, last_product)

    all_ids = [p.item_id for p in session]
    assert len(all_ids) == len(set(all_ids)), "an item served twice"
    ad_pos = [p.position for p in session if p.type == "ad"]
    if rules.ad_every <= 0:
        assert ad_pos == []
    assert sum(1 for p in ad_pos if p < rules.first_screen) <= max(rules.first_screen_max_ads, 0)
    for a, b in zip(ad_pos, ad_pos[1:]):
        assert b - a >= max(rules.ad_every, 2)
    for p in ad_pos:
        for q in (p - 1, p + 1):
            if 0 <= q < len(session):
                assert session[q].type not in ("ad", "product"), f"ad at {p} next to a {session[q].type}"
