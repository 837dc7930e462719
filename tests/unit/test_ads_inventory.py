"""The ad inventory: loading, campaign views, targeting, eligibility."""

from __future__ import annotations

import numpy as np
import pytest

from genrec.ads.inventory import AD_COLUMNS, AdInventory, eligible
from genrec.data.schema import ItemKind
from genrec.data.synthetic import generate
from genrec.settings import DataConfig

AD, CONTENT, PRODUCT = int(ItemKind.AD), int(ItemKind.CONTENT), int(ItemKind.PRODUCT)
NAN = float("nan")


def _columns() -> dict[str, np.ndarray]:
    """Seven catalogue items: 4 servable ads (2 campaigns), 1 ad with no bid, content, product."""
    return {
        "kind": np.array([CONTENT, AD, AD, AD, PRODUCT, AD, AD], np.int8),
        "category": np.array([0, 1, 2, 3, 4, 5, 6], np.int32),
        "advertiser": np.array([-1, 7, 7, 8, -1, 8, 9], np.int32),
        "campaign": np.array([-1, 10, 10, 20, -1, 20, 30], np.int32),
        "bid_cpc": np.array([NAN, 0.5, 0.9, 0.3, NAN, 0.7, NAN], np.float32),
        "daily_budget": np.array([NAN, 50, 100, 250, NAN, 250, 50], np.float32),
        "frequency_cap": np.array([-1, 3, 5, 2, -1, 4, 3], np.int32),
        "target_categories": np.array([[-1, -1, -1], [1, 4, -1], [2, 9, 9], [3, -1, -1], [-1, -1, -1], [5, 1, -1], [6, -1, -1]], np.int32),
    }


@pytest.fixture
def inv() -> AdInventory:
    return AdInventory.from_columns(_columns())


def test_only_servable_ad_rows(inv):
    assert inv.item.tolist() == [1, 2, 3, 5]  # content, product and the bid-less ad left out
    assert inv.campaigns.tolist() == [10, 20]
    assert inv.target_categories.shape == (4, 3)
    assert inv.bid_cpc.dtype == np.float64 and inv.frequency_cap.dtype == np.int64
    assert inv.row(5) == 3
    with pytest.raises(KeyError):
        inv.row(0)


def test_campaign_views(inv):
    assert inv.campaign_budget(10) == 100.0  # the max of its rows
    assert inv.campaign_cap(10) == 3  # the min of its rows
    assert inv.campaign_cap(20) == 2
    assert inv.row_cap.tolist() == [3, 3, 2, 2]
    with pytest.raises(KeyError):
        inv.campaign_budget(99)


def test_from_item_table_file_and_folder(tmp_path, inv):
    np.savez(tmp_path / "item_table.npz", **_columns(), log_popularity=np.zeros(7), author=np.zeros(7), n_categories=10)
    for source in (tmp_path, tmp_path / "item_table.npz", str(tmp_path / "item_table.npz")):
        assert AdInventory.from_item_table(source).item.tolist() == inv.item.tolist()


def test_old_item_table_gives_a_clear_error(tmp_path):
    np.savez(tmp_path / "item_table.npz", category=np.zeros(3), author=np.zeros(3), kind=np.zeros(3), log_popularity=np.zeros(3))
    with pytest.raises(ValueError, match="lacks the ad columns .*retrain"):
        AdInventory.from_item_table(tmp_path)
    with pytest.raises(ValueError, match="lacks the ad columns"):
        AdInventory.from_item_table({"kind": np.zeros(3)})


def test_from_synthetic_metadata():
    meta = generate(DataConfig(n_items=800, n_users=50, n_categories=8, history_median=5, history_max=20)).item_metadata
    inv = AdInventory.from_metadata(meta)
    assert len(inv) == int((meta.kind == ItemKind.AD).sum()) > 0
    assert np.all(inv.bid_cpc > 0) and np.all(inv.frequency_cap >= 2)
    assert np.all(inv.target_categories[:, 0] == inv.category)
    assert set(AD_COLUMNS) <= {f for f in meta.__dataclass_fields__}


def test_matching_targets_recent_categories(inv):
    assert inv.matching({1}).tolist() == [0, 3]  # row 0 targets 1, row 3 targets 5 and 1
    assert inv.matching([9, 3]).tolist() == [1, 2]
    assert inv.matching({42}).tolist() == []
    assert inv.matching({-1}).tolist() == []  # the padding never matches


def test_cold_user_matches_run_of_network(inv):
    assert inv.matching(set()).tolist() == [0, 1, 2, 3]


def test_eligible_drops_capped_exhausted_throttled(inv):
    every = np.arange(4)
    assert eligible(inv, every, cap_counts={}, exhausted=(), throttled=()).tolist() == [1, 3, 0, 2]  # bid desc
    # campaign 20's cap is 2: two impressions today block it, one does not
    assert eligible(inv, every, cap_counts={20: 2}, exhausted=(), throttled=()).tolist() == [1, 0]
    assert eligible(inv, every, cap_counts={20: 1, 10: 3}, exhausted=(), throttled=()).tolist() == [3, 2]
    assert eligible(inv, every, cap_counts={}, exhausted={10}, throttled=()).tolist() == [3, 2]
    assert eligible(inv, every, cap_counts={}, exhausted=(), throttled=[20]).tolist() == [1, 0]
    assert eligible(inv, every[:0], cap_counts={}, exhausted=(), throttled=()).tolist() == []


def test_eligible_keeps_the_highest_bids(inv):
    assert eligible(inv, np.arange(4), cap_counts={}, exhausted=(), throttled=(), max_candidates=2).tolist() == [1, 3]
    assert eligible(inv, np.arange(4), cap_counts={}, exhausted=(), throttled=(), max_candidates=0).tolist() == []


def test_zero_cap_never_serves():
    cols = _columns()
    cols["frequency_cap"] = np.zeros(7, np.int32)
    inv = AdInventory.from_columns(cols)
    assert eligible(inv, np.arange(len(inv)), cap_counts={}, exhausted=(), throttled=()).tolist() == []
