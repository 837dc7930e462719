"""Item-to-item transitions (genrec.ensemble.transitions): counted within one user's window,
never across users, each item's followers capped and ranked; request-time votes and the
transitions source's candidates."""

from __future__ import annotations

from collections import Counter

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from genrec.ensemble.transitions import SMOOTHING, Transitions


def _brute_force(items: list[int], users: list[int], window: int) -> Counter:
    pairs: Counter = Counter()
    for i in range(len(items)):
        for j in range(i + 1, min(i + window + 1, len(items))):
            if users[j] == users[i] and items[j] != items[i]:
                pairs[(items[i], items[j])] += 1
    return pairs


def test_counts_pairs_within_one_user_only():
    t = Transitions.count(np.array([1, 2, 3, 2, 3]), np.array([0, 0, 0, 1, 1]), 5, window=1, top=10)
    assert t.items[t.indptr[2] : t.indptr[3]].tolist() == [3]  # 2 -> 3 twice (users 0 and 1)
    assert np.isclose(t.weight[t.indptr[2]], 2 / (2 + SMOOTHING))
    assert t.items[t.indptr[3] : t.indptr[4]].tolist() == []  # 3 (user 0) -> 2 (user 1) crosses users


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 11)), min_size=0, max_size=60),
    st.integers(1, 4),
    st.integers(1, 5),
)
def test_table_matches_a_brute_force_count(events, window, top):
    events = sorted(events, key=lambda e: e[0])  # grouped by user, order kept within a user
    users = [u for u, _ in events]
    items = [i for _, i in events]
    n = 12
    t = Transitions.count(np.array(items, np.int64), np.array(users, np.int64), n, window, top)
    pairs = _brute_force(items, users, window)
    assert t.indptr.size == n + 1 and t.indptr[-1] == t.items.size == t.weight.size
    for a in range(n):
        mine = {b: c for (x, b), c in pairs.items() if x == a}
        total = sum(mine.values())
        expected = sorted(mine, key=lambda b: (-mine[b], b))[:top]
        got = t.items[t.indptr[a] : t.indptr[a + 1]].tolist()
        assert got == expected
        assert np.allclose(t.weight[t.indptr[a] : t.indptr[a + 1]], [mine[b] / (total + SMOOTHING) for b in expected])


def test_votes_scores_and_followers():
    # 1 -> 2 (x3), 1 -> 4 (x1), 5 -> 4 (x2): the latest two events vote
    log = [(0, 1), (0, 2), (1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 4), (4, 5), (4, 4), (5, 5), (5, 4)]
    t = Transitions.count(np.array([i for _, i in log]), np.array([u for u, _ in log]), 8, window=2, top=5)
    hist = np.array([7, 1, 5])  # 7 is outside the window of two
    w12, w14, w54 = 3 / (4 + SMOOTHING), 1 / (4 + SMOOTHING), 2 / (2 + SMOOTHING)
    assert np.allclose(t.scores(hist, np.array([2, 4, 6, 0])), [w12, w14 + w54, 0, 0])
    assert t.followers(hist, np.zeros(0, np.int64), 10).tolist() == ([4, 2] if w14 + w54 > w12 else [2, 4])
    assert t.followers(hist, np.array([4]), 10).tolist() == [2]  # excluded items never come back
    assert t.followers(hist, np.zeros(0, np.int64), 1).size == 1
    assert t.followers(np.array([2]), np.zeros(0, np.int64), 10).size == 0  # 2 has no followers
    assert t.followers(np.zeros(0, np.int64), np.zeros(0, np.int64), 10).size == 0  # empty history


def test_arrays_round_trip_and_missing_ones_mean_empty(tmp_path):
    t = Transitions.count(np.array([1, 2, 3]), np.array([0, 0, 0]), 4, window=2, top=3)
    np.savez(tmp_path / "t.npz", **t.arrays())
    with np.load(tmp_path / "t.npz") as z:
        back = Transitions.from_arrays(z, 4)
    assert back.window == 2 and back.items.tolist() == t.items.tolist() and np.array_equal(back.weight, t.weight)
    empty = Transitions.from_arrays({"category": np.zeros(4)}, 4)
    assert empty.n_items == 4 and empty.scores(np.array([1, 2]), np.array([3])).tolist() == [0.0]
