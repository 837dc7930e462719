from dataclasses import replace

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from genrec.ensemble.beam_search import Generated
from genrec.ensemble.cascade import NOT_GENERATED_RANK, merge, prerank_keep, prerank_scores, top_k
from genrec.ensemble.ranking_features import N_FEATURES, ItemTable, ranking_features

N = 50
RNG = np.random.default_rng(0)
VECS = RNG.normal(size=(N, 4)).astype(np.float32)
TABLE = ItemTable(RNG.integers(0, 5, N), RNG.integers(0, 9, N), RNG.integers(0, 3, N), RNG.random(N), 5)


@settings(deadline=None)  # the time is not the point; a busy 2-core machine trips the default
@given(
    st.sets(st.integers(0, N - 1), max_size=30),
    st.lists(st.integers(0, N - 1), max_size=30, unique=True),
    st.lists(st.integers(0, N - 1), max_size=10, unique=True),
    st.integers(1, 60),
)
def test_merge_is_a_capped_deduplicated_union(gen_set, ann, follow, cap):
    gen_items = np.array(sorted(gen_set), dtype=np.int64)
    gen = Generated(gen_items, -np.arange(gen_items.size, dtype=np.float64), np.arange(gen_items.size))
    user = np.ones(4, dtype=np.float32)
    c = merge(gen, np.array(ann, dtype=np.int64), user, VECS, cap, np.array(follow, dtype=np.int64))
    assert len(c) == min(cap, len(set(ann) | set(follow) | gen_set))
    assert np.unique(c.items).size == len(c)
    assert set(ann[:cap]) <= set(c.items.tolist())  # ANN items are always kept
    # then the transitions source's, best first, before any generated-only item
    follow_only = [i for i in follow if i not in ann[:cap]][: max(0, cap - len(ann[:cap]))]
    assert c.items[len(ann[:cap]) : len(ann[:cap]) + len(follow_only)].tolist() == follow_only
    assert set(c.items[c.in_follow].tolist()) == set(follow) & set(c.items.tolist())
    assert np.allclose(c.ann_sim, VECS[c.items] @ user)
    for i, it in enumerate(c.items):
        if it in gen_set:
            j = int(np.flatnonzero(gen_items == it)[0])
            assert c.in_gen[i] and c.gen_logprob[i] == gen.logprob[j] and c.beam_rank[i] == j
        else:
            assert not c.in_gen[i] and c.beam_rank[i] == NOT_GENERATED_RANK
            assert c.gen_logprob[i] < gen.logprob.min(initial=0.0)
    # gen-only items dropped by the cap are the least likely ones
    kept_gen = set(c.items[c.in_gen & ~c.in_ann & ~c.in_follow].tolist())
    dropped = gen_set - set(c.items.tolist())
    if kept_gen and dropped:
        lp = dict(zip(gen_items.tolist(), gen.logprob))
        assert min(lp[i] for i in kept_gen) >= max(lp[i] for i in dropped)


def test_prerank_and_top_k_are_deterministic():
    gen = Generated(np.array([1, 2, 3]), np.array([-1.0, -2.0, -3.0]), np.arange(3))
    c = merge(gen, np.array([4]), np.ones(4, np.float32), VECS, 10)
    s = prerank_scores(c, 0.0)
    assert top_k(s, 2).tolist() == [1, 2]  # items 1, 2 (index 0 is ANN item 4)
    assert top_k(np.array([1.0, 1.0, 1.0]), 2).tolist() == [0, 1]  # ties go to the lower index


def test_ranking_features_shape_and_values():
    gen = Generated(np.array([1, 2, 3]), np.array([-1.0, -2.0, -3.0]), np.arange(3))
    c = merge(gen, np.array([4, 1]), np.ones(4, np.float32), VECS, 10)
    hist = np.array([1, 5, 6])
    f = ranking_features(c, prerank_scores(c, 1.0), TABLE, hist, np.array([100, 200, 300]), 360.0)
    assert f.shape == (len(c), N_FEATURES) and f.dtype == np.float32 and np.isfinite(f).all()
    seen_col = f[:, 12]
    assert seen_col[c.items.tolist().index(1)] == 1.0 and seen_col[c.items.tolist().index(2)] == 0.0
    cold = ranking_features(c, prerank_scores(c, 1.0), TABLE, np.zeros(0, np.int64), np.zeros(0, np.int64), 0.0)
    assert np.isfinite(cold).all() and cold[:, 6].sum() == 0


@settings(deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=40), st.integers(1, 40), st.integers(0, 40))
def test_prerank_keep_reserves_slots_for_the_most_voted(votes, keep, follow_keep):
    n = len(votes)
    gen = Generated(np.arange(n, dtype=np.int64), -np.arange(n, dtype=np.float64), np.arange(n))
    c = merge(gen, np.zeros(0, np.int64), np.ones(4, np.float32), np.ones((n, 4), np.float32), n)
    c = replace(c, follow_score=np.array(votes))
    scores = prerank_scores(c, 0.0)  # the beams' order: candidate i has score -i
    follow_keep = min(follow_keep, keep)
    kept = prerank_keep(c, scores, keep, follow_keep)
    assert kept.size == min(keep, n) and np.unique(kept).size == kept.size
    assert np.all(np.diff(scores[kept]) <= 0)  # one order, by pre-rank score
    voted = np.flatnonzero(c.follow_score > 0)
    best_voted = voted[np.argsort(-c.follow_score[voted], kind="stable")][:follow_keep]
    assert set(best_voted.tolist()) <= set(kept.tolist())
    # the rest are the best by pre-rank score among the others
    others = np.setdiff1d(np.arange(n), best_voted)
    expected_rest = others[: kept.size - best_voted.size]
    assert set(kept.tolist()) == set(best_voted.tolist()) | set(expected_rest.tolist())
    if follow_keep == 0:
        assert kept.tolist() == top_k(scores, keep).tolist()  # no quota: the plain top-k
