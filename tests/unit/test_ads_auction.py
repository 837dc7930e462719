"""The auction: eligibility, eCPM ranking, one ad per campaign, GSP prices."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genrec.ads.auction import AdBid, gsp_price, make_bids, rank_bids, run_auction
from genrec.ads.inventory import AdInventory
from genrec.data.schema import ItemKind

FLOOR, MIN_ECPM = 0.05, 0.002


def test_worked_example():
    """The example in ads/README.md."""
    bids = [
        AdBid(1, 10, 1.00, 0.05),  # eCPM 0.05
        AdBid(2, 20, 0.50, 0.08),  # eCPM 0.04
        AdBid(3, 30, 2.00, 0.01),  # eCPM 0.02
        AdBid(4, 40, 0.04, 0.50),  # under the floor
        AdBid(5, 50, 0.10, 0.01),  # eCPM 0.001 < min_ecpm
    ]
    wins = run_auction(bids, slots=2, floor_cpc=FLOOR, min_ecpm=MIN_ECPM)
    assert [w.item for w in wins] == [1, 2]
    assert wins[0].price == pytest.approx(0.04 / 0.05)  # 0.80: B's eCPM over A's pCTR
    assert wins[1].price == pytest.approx(0.02 / 0.08)  # 0.25: C's eCPM, though C won no slot
    assert wins[0].ecpm == pytest.approx(0.05)
    # with three slots the last winner has nobody below it: it pays the floor
    assert run_auction(bids, slots=3, floor_cpc=FLOOR, min_ecpm=MIN_ECPM)[-1].price == FLOOR


def test_price_clamped_to_floor_and_bid():
    assert gsp_price(AdBid(1, 1, 1.0, 0.5), 0.001, 0.05) == 0.05  # next eCPM tiny: the floor
    assert gsp_price(AdBid(1, 1, 1.0, 0.5), 0.9, 0.05) == 1.0  # never above the own bid
    assert gsp_price(AdBid(1, 1, 1.0, 0.5), None, 0.05) == 0.05


def test_one_ad_per_campaign_keeps_its_best():
    bids = [AdBid(1, 10, 1.0, 0.01), AdBid(2, 10, 1.0, 0.03), AdBid(3, 20, 1.0, 0.02)]
    wins = run_auction(bids, slots=3, floor_cpc=FLOOR, min_ecpm=MIN_ECPM)
    assert [(w.item, w.campaign) for w in wins] == [(2, 10), (3, 20)]
    assert wins[0].price == pytest.approx(0.02 / 0.03)  # the campaign's own weaker ad sets no price


def test_bad_pctr_and_no_slots():
    bids = [AdBid(1, 1, 1.0, math.nan), AdBid(2, 2, 1.0, 0.0), AdBid(3, 3, 1.0, -0.1), AdBid(4, 4, math.inf, 0.1)]
    assert run_auction(bids, slots=4, floor_cpc=FLOOR, min_ecpm=MIN_ECPM) == []
    assert run_auction([AdBid(1, 1, 1.0, 0.1)], slots=0, floor_cpc=FLOOR, min_ecpm=MIN_ECPM) == []
    assert run_auction([], slots=3, floor_cpc=FLOOR, min_ecpm=MIN_ECPM) == []


def test_ties_are_deterministic():
    bids = [AdBid(9, 1, 1.0, 0.1), AdBid(3, 2, 1.0, 0.1), AdBid(5, 3, 1.0, 0.1)]
    for order in (bids, bids[::-1]):
        assert [w.item for w in run_auction(order, 3, FLOOR, MIN_ECPM)] == [3, 5, 9]


def test_make_bids_from_inventory():
    n = 4
    inv = AdInventory.from_columns(
        {
            "kind": np.array([ItemKind.AD, ItemKind.CONTENT, ItemKind.AD, ItemKind.AD]),
            "category": np.arange(n),
            "advertiser": np.array([1, -1, 2, 2]),
            "campaign": np.array([11, -1, 21, 22]),
            "bid_cpc": np.array([0.5, np.nan, 0.7, 0.9]),
            "daily_budget": np.array([50.0, np.nan, 50.0, 50.0]),
            "frequency_cap": np.array([3, -1, 3, 3]),
            "target_categories": np.full((n, 3), -1),
        }
    )
    bids = make_bids(inv, np.array([2, 0]), np.array([0.1, 0.2], np.float32))
    assert [(b.item, b.campaign, b.bid) for b in bids] == [(3, 22, 0.9), (0, 11, 0.5)]
    assert bids[1].pctr == pytest.approx(0.2)
    with pytest.raises(ValueError, match="pCTR values"):
        make_bids(inv, np.array([0, 1]), np.array([0.1]))


# --- properties -----------------------------------------------------------------------------

pctrs = st.one_of(st.floats(1e-4, 1.0), st.sampled_from([0.0, -0.5, math.nan, math.inf]))
bid_lists = st.lists(
    st.builds(AdBid, item=st.integers(0, 40), campaign=st.integers(0, 8), bid=st.floats(0.0, 5.0), pctr=pctrs),
    max_size=30,
    unique_by=lambda b: b.item,
)
floors = st.floats(0.0, 1.0)
min_ecpms = st.floats(0.0, 0.2)
slot_counts = st.integers(0, 6)


@settings(max_examples=300, deadline=None)
@given(bids=bid_lists, slots=slot_counts, floor=floors, min_ecpm=min_ecpms)
def test_auction_invariants(bids, slots, floor, min_ecpm):
    wins = run_auction(bids, slots, floor, min_ecpm)
    ranked = rank_bids(bids, floor, min_ecpm)
    assert len(wins) <= max(slots, 0)
    assert len({w.campaign for w in wins}) == len(wins), "a campaign won twice"
    assert [w.ecpm for w in wins] == sorted((w.ecpm for w in wins), reverse=True)
    for i, w in enumerate(wins):
        assert w.bid >= floor and w.ecpm >= min_ecpm and w.pctr > 0
        assert floor <= w.price <= w.bid
        assert ranked[i].item == w.item
        next_ecpm = ranked[i + 1].ecpm if i + 1 < len(ranked) else None
        if next_ecpm is None:
            assert w.price == floor
        else:
            assert w.price <= max(floor, next_ecpm / w.pctr)
    # the winners are the best campaigns: nobody left out ranks above the last winner
    if wins:
        losers = [b for b in bids if b.item not in {w.item for w in wins} and b in ranked]
        assert all(b.ecpm <= wins[-1].ecpm for b in losers)
    elif slots > 0:
        assert ranked == []


def _rank(bids, item, floor, min_ecpm):
    order = [b.item for b in rank_bids(bids, floor, min_ecpm)]
    return order.index(item) if item in order else None


@settings(max_examples=300, deadline=None)
@given(
    others=bid_lists,
    me=st.builds(AdBid, item=st.just(100), campaign=st.integers(0, 8), bid=st.floats(0.0, 5.0), pctr=st.floats(1e-3, 1.0)),
    raise_by=st.floats(0.0, 5.0),
    floor=floors,
    min_ecpm=min_ecpms,
)
def test_raising_a_bid_never_lowers_the_rank(others, me, raise_by, floor, min_ecpm):
    before = _rank([*others, me], me.item, floor, min_ecpm)
    after = _rank([*others, AdBid(me.item, me.campaign, me.bid + raise_by, me.pctr)], me.item, floor, min_ecpm)
    if before is not None:
        assert after is not None and after <= before
