import numpy as np
import pytest

from genrec.data.movielens import load_movielens
from genrec.data.schema import Action, ItemKind
from genrec.data.split import leave_last_out
from genrec.data.synthetic import generate
from genrec.errors import InvalidValueError
from genrec.settings import DataConfig

SMALL = DataConfig(n_items=1500, n_users=300, n_categories=12, n_authors=120, n_text_tokens=120, history_median=25, history_max=120)


@pytest.fixture(scope="module")
def ds():
    return generate(SMALL)


def test_generator_is_deterministic(ds):
    assert generate(SMALL).content_hash() == ds.content_hash()
    assert generate(DataConfig(**{**SMALL.__dict__, "seed": 1})).content_hash() != ds.content_hash()


def test_events_sorted_and_typed(ds):
    ev = ds.events
    assert np.all(np.diff(ev.user) >= 0)
    same = ev.user[1:] == ev.user[:-1]
    assert np.all(np.diff(ev.timestamp)[same] > 0)
    assert set(np.unique(ev.action)) == {a.value for a in Action}
    assert ev.item.max() < ds.item_metadata.n_items


def test_popularity_is_heavy_tailed(ds):
    counts = np.sort(np.bincount(ds.events.item, minlength=ds.item_metadata.n_items))[::-1]
    top1pct = counts[: len(counts) // 100].sum() / counts.sum()
    assert top1pct > 0.05  # 1% of items take far more than 1% of events


def test_sequences_have_learnable_transitions(ds):
    """The most frequent successor of an item repeats far more often than chance."""
    ev = ds.events
    same = ev.user[1:] == ev.user[:-1]
    pairs = ev.item[:-1][same].astype(np.int64) * ds.item_metadata.n_items + ev.item[1:][same]
    _, counts = np.unique(pairs, return_counts=True)
    assert (counts >= 3).sum() > 100


def test_kinds_carry_their_attributes(ds):
    cat = ds.item_metadata
    ads, products = cat.kind == ItemKind.AD, cat.kind == ItemKind.PRODUCT
    assert ads.any() and products.any() and (cat.kind == ItemKind.CONTENT).any()
    assert np.all(cat.bid_cpc[ads] > 0) and np.all(np.isnan(cat.bid_cpc[~ads]))
    assert np.all(cat.frequency_cap[ads] > 0) and np.all(cat.daily_budget[ads] > 0)
    assert np.all(cat.target_categories[ads, 0] == cat.category[ads])
    assert np.all(cat.price[products] > 0) and np.all(np.isnan(cat.price[~products]))


def test_leave_last_out(ds):
    split = leave_last_out(ds.events)
    train = split.train_events(ds.events)
    for u in split.eligible_users[:50]:
        end = split.offsets[u + 1]
        assert split.test_target(ds.events, u)[1] == end - 1
        assert split.validation_target(ds.events, u)[1] == end - 2
        assert split.train_end[u] == end - 2
    assert len(train) == len(ds.events) - 2 * split.eligible_users.size


def test_movielens_formats(tmp_path):
    (tmp_path / "u.data").write_text("1\t10\t5\t300\n1\t11\t3\t100\n2\t10\t1\t50\n1\t12\t4\t200\n")
    ds = load_movielens(tmp_path / "u.data")
    assert ds.item_metadata.n_items == 3 and ds.events.n_users == 2
    # user 1's events ordered by time: items 11 (t100), 12 (t200), 10 (t300) -> dense ids 1, 2, 0
    assert ds.events.item[:3].tolist() == [1, 2, 0]
    assert ds.events.action[:3].tolist() == [Action.CLICK, Action.LIKE, Action.PURCHASE]
    (tmp_path / "ratings.dat").write_text("7::3::2::10\n7::4::5::20\n")
    ds2 = load_movielens(tmp_path / "ratings.dat")
    assert ds2.events.item.tolist() == [0, 1]


def test_movielens_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_movielens(tmp_path / "missing.data")
    (tmp_path / "bad.data").write_text("1\t2\n")
    with pytest.raises(InvalidValueError, match="line 1"):
        load_movielens(tmp_path / "bad.data")
