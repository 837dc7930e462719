import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genrec.ensemble.prefix_trie import PrefixTrie

SIZES = (4, 5, 6)
codes_strategy = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4), st.integers(0, 5)), min_size=1, max_size=80)


@settings(max_examples=60)
@given(codes_strategy)
def test_every_item_is_found_under_its_leaf(rows):
    codes = np.array(rows)
    trie = PrefixTrie.build(codes, SIZES)
    leaves = trie.leaf_of(codes)
    assert np.all(leaves >= 0)
    rows_, items = trie.items_of(leaves)
    for i in range(len(codes)):
        assert i in items[rows_ == i]
    # codes not in the catalogue have no leaf
    missing = [(a, b, c) for a in range(4) for b in range(5) for c in range(6) if (a, b, c) not in set(rows)][:5]
    if missing:
        assert np.all(trie.leaf_of(np.array(missing)) == -1)


@settings(max_examples=60)
@given(codes_strategy, st.data())
def test_expand_lists_exactly_the_allowed_children(rows, data):
    codes = np.array(rows)
    trie = PrefixTrie.build(codes, SIZES)
    excluded = np.array(data.draw(st.lists(st.integers(0, len(codes) - 1), max_size=10)), dtype=np.int64)
    counts = trie.counts_without(excluded)
    allowed_items = np.setdiff1d(np.arange(len(codes)), excluded)
    r, c, _ = trie.expand(0, np.array([0]), counts)
    assert set(c.tolist()) == set(codes[allowed_items, 0].tolist())
    allowed = set(allowed_items.tolist())
    for first in set(codes[:, 0].tolist()):
        depth1 = trie.item_path[np.flatnonzero(codes[:, 0] == first)[0], 0]
        _, c2, _ = trie.expand(1, np.array([depth1]), counts)
        assert set(c2.tolist()) == {int(codes[i, 1]) for i in range(len(codes)) if codes[i, 0] == first and i in allowed}


def test_bad_codes_are_rejected():
    with pytest.raises(ValueError, match="level 2"):
        PrefixTrie.build(np.array([[0, 9, 0]]), SIZES)
    with pytest.raises(ValueError, match="must be"):
        PrefixTrie.build(np.array([0, 1, 2]), SIZES)
