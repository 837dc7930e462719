"""Token-capped batching and the synthetic presets of issue 10 (heavy users, rating-shaped data)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genrec.batching import chunk_by_tokens, token_batches
from genrec.data.synthetic import generate
from genrec.settings import DataConfig

SMALL = DataConfig(n_items=1500, n_users=300, n_categories=12, n_authors=120, n_text_tokens=120, history_median=25, history_max=120)


@settings(deadline=None, max_examples=60)
@given(st.lists(st.integers(2, 9000), max_size=60), st.integers(1, 20_000), st.integers(1, 40))
def test_token_batches_cover_every_index_once_within_the_budget(tokens, budget, max_batch):
    batches = token_batches(tokens, budget, max_batch)
    flat = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
    assert sorted(flat.tolist()) == list(range(len(tokens)))
    for b in batches:
        longest = max(tokens[i] for i in b)
        assert len(b) <= max_batch
        assert len(b) == 1 or len(b) * longest <= budget  # a single over-budget history goes alone
    # shortest first: batches are consecutive runs of the length order
    assert [tokens[i] for i in flat] == sorted(tokens)


def test_chunks_are_consecutive_slices():
    assert chunk_by_tokens([10, 10, 20, 40, 100], budget=60, max_batch=8) == [slice(0, 3), slice(3, 4), slice(4, 5)]


def test_default_data_is_unchanged_by_the_new_options():
    base = generate(SMALL)
    assert generate(DataConfig(**{**SMALL.__dict__, "heavy_users": 0})).content_hash() == base.content_hash()


def test_heavy_users_have_thousands_of_events():
    ds = generate(DataConfig(**{**SMALL.__dict__, "heavy_users": 3}))
    counts = np.bincount(ds.events.user)
    heavy = counts[counts >= 3_000]
    assert heavy.size == 3 and heavy.max() <= 4_096
    assert np.sort(counts)[-4] <= SMALL.history_max


@pytest.fixture(scope="module")
def ratings():
    return generate(DataConfig(**{**SMALL.__dict__, "n_users": 400, "preset": "realistic", "rating_history_max": 1_000}))


def test_rating_preset_is_shaped_like_rating_data(ratings):
    ev = ratings.events
    assert ratings.name.startswith("ratings-")
    pairs = ev.user.astype(np.int64) * ratings.item_metadata.n_items + ev.item
    assert np.unique(pairs).size == len(ev)  # each item at most once per user
    same = ev.user[1:] == ev.user[:-1]
    dt = np.diff(ev.timestamp)[same]
    assert np.all(dt >= 0) and (dt == 0).mean() > 0.3  # sittings: many ratings share a timestamp
    counts = np.bincount(ev.user)
    assert counts.max() > 8 * np.median(counts)  # heavy-tailed activity
    assert set(np.unique(ev.action)) == {0, 1, 2, 3}  # ratings 1-5 mapped to the four actions


def test_rating_preset_is_deterministic_and_selectable(ratings):
    cfg = DataConfig(**{**SMALL.__dict__, "n_users": 400, "preset": "realistic", "rating_history_max": 1_000})
    assert generate(cfg).content_hash() == ratings.content_hash()
    with pytest.raises(ValueError, match="preset"):
        DataConfig(preset="movielens")


def test_early_stopping_keeps_the_best_epoch_and_stops_after_patience():
    import torch

    from genrec.train import EarlyStopping

    model = torch.nn.Linear(2, 1)
    stop = EarlyStopping(2, [model])
    stops = []
    for epoch, value in enumerate([3.0, 2.0, 2.5, 1.9, 2.2, 2.1], start=1):
        with torch.no_grad():
            model.weight.fill_(value)
        stops.append(stop.update(epoch, value, {"loss": value}, higher_is_better=False))
    assert stops == [False, False, False, False, False, True]
    report = stop.restore()
    assert report["best_epoch"] == 4 and report["epochs_run"] == 6
    assert torch.all(model.weight == 1.9)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=12), st.integers(1, 8), st.integers(2, 64), st.integers(0, 2**31))
def test_sasrec_windows_are_slices_of_the_history_with_the_latest_first(lengths, per_user, max_len, seed):
    from genrec.train import sasrec_windows

    seqs = [np.arange(n, dtype=np.int64) + 1000 * u for u, n in enumerate(lengths)]
    windows = sasrec_windows(seqs, per_user, max_len, np.random.default_rng(seed))
    at = 0
    for s in seqs:
        extra = per_user - 1 if len(s) > max_len + 1 else 0
        mine, at = windows[at : at + 1 + extra], at + 1 + extra
        assert np.array_equal(mine[0], s[-(max_len + 1) :])  # the latest window always
        for w in mine[1:]:  # earlier windows: whole, contiguous, inside the history
            assert len(w) == max_len + 1 and np.all(np.diff(w) == 1) and w[0] >= s[0] and w[-1] < s[-1]
    assert at == len(windows)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=6), st.integers(0, 2**31))
def test_next_item_targets_are_each_events_successor_seen_from_its_action_token(lengths, seed):
    """The next-item loss's positions: one per event that has a successor, at the event's ACTION
    token (causal: the output there has not seen the successor), the successor's item as target;
    nothing from padding, the USER or CTX tokens, or across users."""
    from genrec.data.schema import History
    from genrec.ensemble.encoder_state import ACTION
    from genrec.models.ugt_encoder import build_tokens
    from genrec.train import next_item_targets

    rng = np.random.default_rng(seed)
    hists = [
        History(rng.integers(0, 500, n), rng.integers(0, 4, n), np.sort(rng.integers(0, 10**6, n)), rng.integers(0, 3, n)) for n in lengths
    ]
    tokens = build_tokens(hists, [0] * len(hists), [0] * len(hists), [10**6] * len(hists))
    rows, cols, items = next_item_targets(tokens)
    for r, h in enumerate(hists):
        mine = rows == r
        assert int(mine.sum()) == max(len(h) - 1, 0)
        assert bool((tokens.types[r, cols[mine]] == ACTION).all())
        assert np.array_equal(items[mine].numpy(), h.item[1:])
        assert np.array_equal(cols[mine].numpy(), 2 + 2 * np.arange(len(h) - 1))  # event i's ACTION token
