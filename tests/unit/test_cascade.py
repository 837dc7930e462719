import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from genrec.ensemble.beam_search import Generated
from genrec.ensemble.cascade import NOT_GENERATED_RANK, merge, prerank_scores, top_k
from genrec.ensemble.ranking_features import N_FEATURES, ItemTable, ranking_features

N = 50
RNG = np.random.default_rng(0)
VECS = RNG.normal(size=(N, 4)).astype(np.float32)
TABLE = ItemTable(RNG.integers(0, 5, N), RNG.integers(0, 9, N), RNG.integers(0, 3, N), RNG.random(N), 5)


@given(st.sets(st.integers(0, N - 1), max_size=30), st.lists(st.integers(0, N - 1), max_size=30, unique=True), st.integers(1, 60))
def test_merge_is_a_capped_deduplicated_union(gen_set, ann, cap):
    gen_items = np.array(sorted(gen_set), dtype=np.int64)
    gen = Generated(gen_items, -np.arange(gen_items.size, dtype=np.float64), np.arange(gen_items.size))
    user = np.ones(4, dtype=np.float32)
    c = merge(gen, np.array(ann, dtype=np.int64), user, VECS, cap)
    assert len(c) == min(cap, len(set(ann) | gen_set))
    assert np.unique(c.items).size == len(c)
    assert set(ann[:cap]) <= set(c.items.tolist())  # ANN items are always kept
    assert np.allclose(c.ann_sim, VECS[c.items] @ user)
    for i, it in enumerate(c.items):
        if it in gen_set:
            j = int(np.flatnonzero(gen_items == it)[0])
            assert c.in_gen[i] and c.gen_logprob[i] == gen.logprob[j] and c.beam_rank[i] == j
        else:
            assert not c.in_gen[i] and c.beam_rank[i] == NOT_GENERATED_RANK
            assert c.gen_logprob[i] < gen.logprob.min(initial=0.0)
    # gen-only items dropped by the cap are the least likely ones
    kept_gen = set(c.items[c.in_gen & ~c.in_ann].tolist())
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
