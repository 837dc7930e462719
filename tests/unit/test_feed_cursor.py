"""The cursor: signed, expiring, user-bound; replaying a cursor gives the same page and a
session never serves an item twice (with an in-memory page store standing in for Redis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genrec.feed.blend import blend, last_product_position
from genrec.feed.cursor import Cursor, CursorCodec, CursorError
from genrec.feed.signing import Signer
from genrec.feed.tokens import EventTokenError, EventTokens

NOW = 1_700_000_000.0


def codec(key: str = "k", ttl: int = 600, max_items: int = 500) -> CursorCodec:
    return CursorCodec(key, ttl, max_items)


class Pager:
    """The service's paging logic over a dict page store: a page is computed once per
    (session, page) and replayed from the store after that."""

    def __init__(self, kinds: np.ndarray, ranking: list[int], codec: CursorCodec) -> None:
        self.kinds, self.ranking, self.codec = kinds, ranking, codec
        self.store: dict[tuple[str, int], tuple[list[int], str | None]] = {}
        self.calls = 0

    def page(self, cursor: Cursor, count: int) -> tuple[list[int], str | None]:
        key = (cursor.session_id, cursor.page)
        if key not in self.store:
            self.calls += 1
            # the "model" shifts its ranking every call, as new events would
            ranked = self.ranking[self.calls % 3 :] + self.ranking[: self.calls % 3]
            placed = blend([(i, -k) for k, i in enumerate(ranked)], self.kinds, cursor.seen, count, 4, cursor.offset, cursor.last_product)
            nxt = self.codec.following(cursor, [p.item_id for p in placed], last_product_position(placed, cursor.last_product))
            self.store[key] = ([p.item_id for p in placed], self.codec.encode(nxt) if nxt else None)
        return self.store[key]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(5, 80), count=st.integers(1, 12), pages=st.integers(1, 8), seed=st.integers(0, 1000))
def test_paging_replays_and_never_repeats(n, count, pages, seed):
    rng = np.random.default_rng(seed)
    kinds = rng.choice([0, 1, 2], size=n, p=[0.7, 0.1, 0.2])
    c = codec()
    pager = Pager(kinds, list(rng.permutation(n)), c)
    cursor = c.first("u1", "s1", NOW)
    served: list[int] = []
    for _ in range(pages):
        items, nxt = pager.page(cursor, count)
        assert pager.page(cursor, count) == (items, nxt), "the same cursor must replay the same page"
        served += items
        if nxt is None:
            break
        replay = c.decode(nxt, "u1", NOW)
        assert pager.page(replay, count) == pager.page(c.decode(nxt, "u1", NOW), count)
        cursor = replay
    assert len(served) == len(set(served)), "an item served twice in one session"


@given(seen=st.lists(st.integers(0, 10**6), max_size=300), page=st.integers(0, 1000), lp=st.one_of(st.none(), st.integers(0, 10**4)))
def test_roundtrip(seen, page, lp):
    c = codec()
    cur = Cursor("user-1", "abc", page, int(NOW) + 60, tuple(seen), lp)
    assert c.decode(c.encode(cur), "user-1", NOW) == cur


@settings(max_examples=200)
@given(pos=st.integers(0, 10_000), ch=st.characters(min_codepoint=33, max_codepoint=126))
def test_any_tamper_is_refused(pos, ch):
    c = codec()
    token = c.encode(Cursor("u", "s", 1, int(NOW) + 60, (1, 2, 3)))
    i = pos % len(token)
    if token[i] == ch:
        return
    tampered = token[:i] + ch + token[i + 1 :]
    with pytest.raises(CursorError):
        c.decode(tampered, "u", NOW)


def test_expired_foreign_and_other_key_are_refused():
    c = codec(ttl=60)
    token = c.encode(c.first("u", "s", NOW))
    with pytest.raises(CursorError, match="expired"):
        c.decode(token, "u", NOW + 61)
    with pytest.raises(CursorError, match="another user"):
        c.decode(token, "v", NOW)
    with pytest.raises(CursorError):
        codec(key="other").decode(token, "u", NOW)
    for junk in ("", ".", "abc", "a.b", "x" * 9000, "é.é"):
        with pytest.raises(CursorError):
            c.decode(junk, "u", NOW)


def test_an_event_token_is_not_a_cursor():
    event_token = EventTokens("k", 60).issue("u", 3, "t", NOW)
    with pytest.raises(CursorError):
        codec().decode(event_token, "u", NOW)


def test_session_ends_at_its_item_cap():
    c = codec(max_items=5)
    first = c.first("u", "s", NOW)
    assert c.following(first, [1, 2, 3, 4, 5], None) is None
    assert c.following(first, [], None) is None
    nxt = c.following(first, [1, 2], 1)
    assert nxt is not None and nxt.offset == 2 and nxt.page == 1 and nxt.last_product == 1


def test_event_tokens():
    t = EventTokens("k", 60)
    tok = t.issue("u", 7, "trace", NOW)
    assert t.verify(tok, "u", 7, NOW + 10).trace_id == "trace"
    for user, item, now in (("v", 7, NOW), ("u", 8, NOW), ("u", 7, NOW + 61)):
        with pytest.raises(EventTokenError):
            t.verify(tok, user, item, now)
    with pytest.raises(EventTokenError):
        EventTokens("other", 60).verify(tok, "u", 7, NOW)
    with pytest.raises(ValueError):
        Signer("", "x")
