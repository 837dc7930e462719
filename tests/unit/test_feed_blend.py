"""The blend: density, dedup, positions, no organic ads."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from genrec.data.schema import ItemKind
from genrec.feed.blend import blend, last_product_position, product_allowed, reason_for

AD, CONTENT, PRODUCT = ItemKind.AD, ItemKind.CONTENT, ItemKind.PRODUCT


def _check_density(page, product_every, last_product=None):
    positions = ([last_product] if last_product is not None else []) + [p.position for p in page if p.type == "product"]
    gap = max(product_every, 2)
    for a, b in zip(positions, positions[1:]):
        assert b - a >= gap, f"products at {a} and {b}"


@settings(max_examples=200, deadline=None)
@given(
    kinds=st.lists(st.sampled_from([CONTENT, AD, PRODUCT]), min_size=1, max_size=60),
    picks=st.lists(st.integers(0, 59), max_size=120),
    excluded=st.sets(st.integers(0, 59), max_size=20),
    count=st.integers(1, 50),
    product_every=st.integers(0, 6),
    offset=st.integers(0, 20),
    last=st.one_of(st.none(), st.integers(-10, 0)),
)
def test_blend_invariants(kinds, picks, excluded, count, product_every, offset, last):
    kinds_arr = np.array(kinds)
    cands = [(i, float(-k)) for k, i in enumerate(picks)]
    last_product = None if last is None else offset + last - 1
    page = blend(cands, kinds_arr, excluded, count, product_every, offset, last_product)
    ids = [p.item_id for p in page]
    assert len(ids) == len(set(ids)), "an item twice on one page"
    assert len(page) <= count
    assert [p.position for p in page] == list(range(offset, offset + len(page)))
    for p in page:
        assert p.item_id not in excluded
        assert 0 <= p.item_id < len(kinds)
        assert kinds_arr[p.item_id] != AD
        assert p.type == ("product" if kinds_arr[p.item_id] == PRODUCT else "content")
    if product_every == 0:
        assert all(p.type == "content" for p in page)
    _check_density(page, product_every, last_product)
    # every eligible content item is placed before the page ends short
    eligible_content = {i for i in picks if i < len(kinds) and kinds[i] == CONTENT and i not in excluded}
    if len(page) < count:
        assert eligible_content <= set(ids)


def test_default_density_one_in_four_never_adjacent():
    kinds = np.array([PRODUCT] * 20 + [CONTENT] * 20)
    cands = [(i, 100.0 - i) for i in range(40)]  # products score highest
    page = blend(cands, kinds, [], 12, 4)
    types = "".join("P" if p.type == "product" else "c" for p in page)
    assert types == "PcccPcccPccc"
    _check_density(page, 4)


def test_products_compete_by_model_score():
    kinds = np.array([CONTENT, CONTENT, PRODUCT, CONTENT, CONTENT])
    page = blend([(0, 0.9), (1, 0.8), (2, 0.7), (3, 0.6), (4, 0.5)], kinds, [], 5, 4)
    assert [p.item_id for p in page] == [0, 1, 2, 3, 4]
    assert page[2].type == "product"


def test_density_carries_across_pages():
    kinds = np.array([PRODUCT] * 10 + [CONTENT] * 10)
    cands = [(i, 100.0 - i) for i in range(20)]
    first = blend(cands, kinds, [], 4, 4)
    last = last_product_position(first, None)
    second = blend(cands, kinds, [p.item_id for p in first], 4, 4, offset=4, last_product=last)
    _check_density(first + second, 4)
    assert [p.position for p in second] == [4, 5, 6, 7]


def test_dedup_and_exclusions():
    kinds = np.array([CONTENT] * 5 + [AD])
    page = blend([(1, 0.9), (1, 0.8), (2, 0.7), (5, 0.6), (3, 0.5), (99, 0.4)], kinds, {3}, 10, 4)
    assert [p.item_id for p in page] == [1, 2]


def test_product_allowed_rules():
    assert product_allowed(0, None, 4)
    assert not product_allowed(3, 0, 4) and product_allowed(4, 0, 4)
    assert not product_allowed(1, 0, 1) and product_allowed(2, 0, 1)  # never adjacent
    assert not product_allowed(10, None, 0)


def test_reasons():
    kinds = np.array([CONTENT, PRODUCT])
    cats = np.array([7, 8])
    assert reason_for(0, kinds, cats, set(), "fallback") == "Popular right now"
    assert "category 7" in reason_for(0, kinds, cats, {7}, "personal")
    assert reason_for(1, kinds, cats, set(), "personal") == "Picked for you from the shop"
