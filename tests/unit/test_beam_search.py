"""Beam search against brute force on a toy step model, and its invariants."""

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from genrec.ensemble.beam_search import beam_search, generated_items
from genrec.ensemble.prefix_trie import PrefixTrie

SIZES = (3, 4, 5)


class TableModel:
    """Logits that depend on the full prefix, from a fixed random table; tracks prefixes itself."""

    def __init__(self, seed: int, n_requests: int) -> None:
        rng = np.random.default_rng(seed)
        self.tables = [rng.normal(size=(n_requests, *SIZES[:level], SIZES[level])) for level in range(3)]
        self.prefix = np.zeros((n_requests, 1, 0), dtype=np.int64)
        self.calls: list[tuple[int, int]] = []

    def step(self, step, codes, parents):
        if parents is not None:
            r = np.arange(self.prefix.shape[0])[:, None]
            self.prefix = np.concatenate([self.prefix[r, parents], codes[:, :, None]], axis=2)
        r, w, _ = self.prefix.shape
        self.calls.append((step, w))
        out = np.empty((r, w, SIZES[step]))
        for i in range(r):
            for j in range(w):
                out[i, j] = self.tables[step][(i, *self.prefix[i, j])]
        return out


def brute_force(model_tables, codes, request, allowed_items):
    """Score of every allowed full ID under the same masked-then-renormalised softmax."""
    allowed = {tuple(codes[i]) for i in allowed_items}
    scores = {}
    for cid in allowed:
        total = 0.0
        for level in range(3):
            prefix = cid[:level]
            valid = {c[level] for c in allowed if c[:level] == prefix}
            logits = model_tables[level][(request, *prefix)]
            lse = np.log(sum(np.exp(logits[v]) for v in valid))
            total += logits[cid[level]] - lse
        scores[cid] = total
    return scores


@settings(deadline=None, max_examples=40)
@given(st.integers(0, 10_000), st.lists(st.integers(0, 59), max_size=8))
def test_full_width_search_is_exact_and_respects_the_trie(seed, excluded_list):
    rng = np.random.default_rng(seed)
    all_ids = np.array(list(itertools.product(*(range(k) for k in SIZES))))
    codes = all_ids[rng.choice(len(all_ids), size=60, replace=False)]
    trie = PrefixTrie.build(codes, SIZES)
    excluded = np.array(sorted(set(excluded_list)), dtype=np.int64)
    model = TableModel(seed, 2)
    widths = (SIZES[0], SIZES[0] * SIZES[1], len(all_ids))  # wide enough to be exhaustive
    res = beam_search(model, trie, widths, 2, [excluded, None])
    gens = generated_items(res, trie, [excluded, None])
    for req, ex in ((0, excluded), (1, np.zeros(0, dtype=np.int64))):
        allowed_items = np.setdiff1d(np.arange(len(codes)), ex)
        expect = brute_force(model.tables, codes, req, allowed_items)
        live = res.leaf[req] >= 0
        got = {tuple(c): s for c, s in zip(res.codes[req][live], res.logprob[req][live])}
        assert set(got) == set(expect)
        for cid, s in got.items():
            assert abs(s - expect[cid]) < 1e-9
        # scores are sorted best first, and no excluded item comes out
        assert np.all(np.diff(res.logprob[req][live]) <= 1e-12)
        assert not np.isin(gens[req].items, ex).any()
        assert set(gens[req].items.tolist()) == set(allowed_items.tolist())


@settings(deadline=None, max_examples=30)
@given(st.integers(0, 10_000), st.integers(1, 4), st.integers(1, 8), st.integers(1, 12))
def test_narrow_beams_only_produce_catalogue_ids(seed, w1, w2, w3):
    rng = np.random.default_rng(seed)
    all_ids = np.array(list(itertools.product(*(range(k) for k in SIZES))))
    codes = all_ids[rng.choice(len(all_ids), size=25, replace=False)]
    trie = PrefixTrie.build(codes, SIZES)
    model = TableModel(seed, 3)
    res = beam_search(model, trie, (w1, w2, w3), 3)
    valid = {tuple(c) for c in codes}
    for req in range(3):
        live = res.leaf[req] >= 0
        assert live.sum() >= 1 and live.sum() <= w3
        assert all(tuple(c) in valid for c in res.codes[req][live])
        assert np.all(trie.leaf_of(res.codes[req][live]) == res.leaf[req][live])
    # the model is never asked for more beams than the widths allow
    assert all(w <= max(1, {0: 1, 1: w1, 2: w2}[s]) for s, w in model.calls)
