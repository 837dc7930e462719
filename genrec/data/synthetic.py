"""Deterministic synthetic data with structure a sequence model can learn and popularity cannot.

- items: power-law popularity, a category, an author (who writes mostly in one category) and
  text-like tokens drawn from their category's vocabulary;
- users: a segment, a main device, and 2-4 interest categories with weights;
- sequences: the next event is, by probability, the current item's *successor* (a fixed
  item of the same author or of the next category in a category chain: "what follows what"),
  an item of the next category in the chain, or an item of one of the user's interests;
- timestamps (sessions with gaps) and actions (view/click/like/purchase, purchases mostly on
  products);
- the same catalogue has ``kind`` content / ad / product, with ad and product attributes.

The ``realistic`` preset (``DataConfig.preset``, ``generate_ratings``) is shaped like public
rating data (MovieLens): each item at most once per user, heavy-tailed activity (log-normal,
up to ``rating_history_max`` events), sittings in which many ratings share one timestamp (and
so come in no meaningful order), ratings 1-5 that depend on the user's taste, mapped to actions
as the MovieLens loader maps them; the "what follows what" patterns are the default's.
"""

from __future__ import annotations

import bisect

import numpy as np

from genrec.data.movielens import RATING_TO_ACTION
from genrec.data.schema import Action, Dataset, Events, ItemKind, ItemMetadata, Users
from genrec.settings import DataConfig

_DAY = 86_400
_START = 1_767_225_600  # 2026-01-01T00:00:00Z


def _catalogue(cfg: DataConfig, rng: np.random.Generator) -> tuple[ItemMetadata, np.ndarray]:
    n = cfg.n_items
    author_category = rng.integers(0, cfg.n_categories, size=cfg.n_authors)
    author = rng.integers(0, cfg.n_authors, size=n).astype(np.int32)
    # 85% of items sit in their author's category; the rest anywhere.
    category = np.where(rng.random(n) < 0.85, author_category[author], rng.integers(0, cfg.n_categories, size=n)).astype(np.int32)

    # Each category draws text tokens mostly from its own slice of the vocabulary.
    per_cat = max(4, cfg.n_text_tokens // cfg.n_categories)
    own = (category[:, None] * per_cat + rng.integers(0, per_cat, size=(n, cfg.text_tokens_per_item))) % cfg.n_text_tokens
    noise = rng.integers(0, cfg.n_text_tokens, size=(n, cfg.text_tokens_per_item))
    text_tokens = np.where(rng.random((n, cfg.text_tokens_per_item)) < 0.75, own, noise).astype(np.int32)

    popularity = 1.0 / np.power(rng.permutation(n) + 1.0, cfg.zipf_exponent)

    u = rng.random(n)
    kind = np.full(n, ItemKind.CONTENT, dtype=np.int8)
    kind[u < cfg.ad_fraction] = ItemKind.AD
    kind[(u >= cfg.ad_fraction) & (u < cfg.ad_fraction + cfg.product_fraction)] = ItemKind.PRODUCT
    is_ad, is_product = kind == ItemKind.AD, kind == ItemKind.PRODUCT

    n_advertisers = max(1, int(is_ad.sum()) // 10)
    advertiser = np.where(is_ad, rng.integers(0, n_advertisers, size=n), -1).astype(np.int32)
    campaign = np.where(is_ad, advertiser * 4 + rng.integers(0, 4, size=n), -1).astype(np.int32)
    bid = np.where(is_ad, np.round(rng.lognormal(np.log(0.5), 0.6, size=n), 2), np.nan).astype(np.float32)
    budget = np.where(is_ad, np.round(rng.choice([50.0, 100.0, 250.0, 1000.0], size=n), 2), np.nan).astype(np.float32)
    freq_cap = np.where(is_ad, rng.integers(2, 6, size=n), -1).astype(np.int32)
    targets = np.where(is_ad[:, None], rng.integers(0, cfg.n_categories, size=(n, 3)), -1).astype(np.int32)
    targets[:, 0] = np.where(is_ad, category, -1)  # an ad always targets its own category
    price = np.where(is_product, np.round(rng.lognormal(np.log(30.0), 0.8, size=n), 2), np.nan).astype(np.float32)

    cat = ItemMetadata(
        category=category,
        author=author,
        text_tokens=text_tokens,
        kind=kind,
        advertiser=advertiser,
        campaign=campaign,
        bid_cpc=bid,
        daily_budget=budget,
        frequency_cap=freq_cap,
        target_categories=targets,
        price=price,
        n_categories=cfg.n_categories,
        n_authors=cfg.n_authors,
        n_text_tokens=cfg.n_text_tokens,
    )
    return cat, popularity


class _Sampler:
    """Popularity-weighted sampling of an item within a category, vectorised with CDFs."""

    def __init__(self, category: np.ndarray, popularity: np.ndarray, n_categories: int) -> None:
        order = np.lexsort((-popularity, category))
        self.items = order
        counts = np.bincount(category, minlength=n_categories)
        self.starts = np.concatenate([[0], np.cumsum(counts)])
        w = popularity[order]
        self.cdf = np.zeros_like(w)
        for c in range(n_categories):
            s, e = self.starts[c], self.starts[c + 1]
            if e > s:
                cs = np.cumsum(w[s:e])
                self.cdf[s:e] = cs / cs[-1]
        self.global_cdf = np.cumsum(popularity) / popularity.sum()

    def in_category(self, c: int, r: float) -> int:
        s, e = self.starts[c], self.starts[c + 1]
        if e == s:
            return int(np.searchsorted(self.global_cdf, r))
        return int(self.items[s + min(int(np.searchsorted(self.cdf[s:e], r)), e - s - 1)])

    def anywhere(self, r: float) -> int:
        return int(min(np.searchsorted(self.global_cdf, r), self.global_cdf.size - 1))


def _with_heavy_users(lengths: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """The first ``cfg.heavy_users`` users (so ``genrec-evaluate --max-users`` keeps them) get
    ``heavy_min_events..heavy_max_events`` events, drawn from their own seed: the long tail of
    real traffic."""
    if cfg.heavy_users <= 0:
        return lengths
    hrng = np.random.default_rng([cfg.seed, 1])
    heavy = np.arange(min(cfg.heavy_users, lengths.size))
    out = lengths.copy()
    out[heavy] = hrng.integers(cfg.heavy_min_events, cfg.heavy_max_events + 1, size=heavy.size)
    return out


def generate(cfg: DataConfig) -> Dataset:
    """The data set of ``cfg.preset``: the default generator or the rating-shaped one."""
    return generate_ratings(cfg) if cfg.preset == "realistic" else _generate_default(cfg)


def _generate_default(cfg: DataConfig) -> Dataset:
    rng = np.random.default_rng(cfg.seed)
    cat, popularity = _catalogue(cfg, rng)
    n = cfg.n_items
    sampler = _Sampler(cat.category, popularity, cfg.n_categories)

    # Category chain: each category has one "next" category (sequential pattern at category level).
    next_category = rng.permutation(cfg.n_categories)
    # Item successor: a same-author item (a series) or a popular item in the next category.
    successor = np.empty(n, dtype=np.int64)
    by_author = np.argsort(cat.author, kind="stable")
    rank_in_author = np.empty(n, dtype=np.int64)
    rank_in_author[by_author] = np.arange(n)
    author_starts = np.searchsorted(cat.author[by_author], np.arange(cfg.n_authors + 1))
    for i in range(n):
        a = cat.author[i]
        s, e = author_starts[a], author_starts[a + 1]
        if e - s > 1 and rng.random() < 0.5:
            # another item of the same author, never the item itself
            successor[i] = by_author[s + (rank_in_author[i] - s + rng.integers(1, e - s)) % (e - s)]
        else:
            successor[i] = sampler.in_category(int(next_category[cat.category[i]]), rng.random())

    n_users = cfg.n_users
    segment = rng.integers(0, cfg.n_segments, size=n_users).astype(np.int32)
    main_device = rng.integers(0, cfg.n_devices, size=n_users).astype(np.int8)
    # Interests correlate with the segment so the user token carries some signal.
    seg_cats = rng.integers(0, cfg.n_categories, size=(cfg.n_segments, 3))
    lengths = np.clip(rng.lognormal(np.log(cfg.history_median), 0.7, size=n_users), cfg.history_min, cfg.history_max).astype(np.int64)
    lengths = _with_heavy_users(lengths, cfg)

    total = int(lengths.sum())
    users = np.empty(total, dtype=np.int32)
    items = np.empty(total, dtype=np.int32)
    actions = np.empty(total, dtype=np.int8)
    stamps = np.empty(total, dtype=np.int64)
    devices = np.empty(total, dtype=np.int8)
    is_product = cat.kind == ItemKind.PRODUCT
    pos = 0
    for u in range(n_users):
        k = int(rng.integers(2, 5))
        interests = np.where(
            rng.random(k) < 0.5, seg_cats[segment[u], rng.integers(0, 3, size=k)], rng.integers(0, cfg.n_categories, size=k)
        )
        weights = rng.dirichlet(np.ones(k))
        t = _START + int(rng.integers(0, 60 * _DAY))
        prev = -1
        for _ in range(int(lengths[u])):
            r = rng.random()
            if prev >= 0 and r < cfg.p_successor:
                item = int(successor[prev])
            elif prev >= 0 and r < cfg.p_successor + cfg.p_category_transition:
                item = sampler.in_category(int(next_category[cat.category[prev]]), rng.random())
            elif r < 0.97:
                item = sampler.in_category(int(interests[rng.choice(k, p=weights)]), rng.random())
            else:
                item = sampler.anywhere(rng.random())
            a = rng.random()
            if is_product[item]:
                action = Action.PURCHASE if a < 0.3 else Action.CLICK if a < 0.7 else Action.VIEW
            else:
                action = Action.VIEW if a < 0.6 else Action.CLICK if a < 0.85 else Action.LIKE if a < 0.97 else Action.PURCHASE
            t += int(rng.exponential(_DAY)) if rng.random() < 0.1 else int(rng.exponential(600)) + 5
            users[pos], items[pos], actions[pos], stamps[pos] = u, item, action, t
            devices[pos] = main_device[u] if rng.random() < 0.8 else rng.integers(0, cfg.n_devices)
            prev = item
            pos += 1

    events = Events(users, items, actions, stamps, devices, n_users)
    heavy = f"-heavy{cfg.heavy_users}" if cfg.heavy_users > 0 else ""
    return Dataset(
        name=f"synthetic-{n}x{n_users}-seed{cfg.seed}{heavy}",
        item_metadata=cat,
        users=Users(segment=segment, main_device=main_device, n_segments=cfg.n_segments),
        events=events,
    )


def _successors(cat: ItemMetadata, sampler: _Sampler, next_category: np.ndarray, cfg: DataConfig, rng: np.random.Generator) -> np.ndarray:
    """Each item's successor: another item of its author (a series) or a popular item of the
    next category of the chain."""
    n = cat.n_items
    successor = np.empty(n, dtype=np.int64)
    by_author = np.argsort(cat.author, kind="stable")
    rank_in_author = np.empty(n, dtype=np.int64)
    rank_in_author[by_author] = np.arange(n)
    author_starts = np.searchsorted(cat.author[by_author], np.arange(cfg.n_authors + 1))
    for i in range(n):
        a = cat.author[i]
        s, e = author_starts[a], author_starts[a + 1]
        if e - s > 1 and rng.random() < 0.5:
            successor[i] = by_author[s + (rank_in_author[i] - s + rng.integers(1, e - s)) % (e - s)]
        else:
            successor[i] = sampler.in_category(int(next_category[cat.category[i]]), rng.random())
    return successor


def generate_ratings(cfg: DataConfig) -> Dataset:
    """The rating-shaped preset (see the module docstring); deterministic by seed."""
    rng = np.random.default_rng([cfg.seed, 2])
    cat, popularity = _catalogue(cfg, rng)
    n = cfg.n_items
    sampler = _Sampler(cat.category, popularity, cfg.n_categories)
    next_category = rng.permutation(cfg.n_categories)
    successor = _successors(cat, sampler, next_category, cfg, rng)

    n_users = cfg.n_users
    segment = rng.integers(0, cfg.n_segments, size=n_users).astype(np.int32)
    seg_cats = rng.integers(0, cfg.n_categories, size=(cfg.n_segments, 3))
    raw = rng.lognormal(np.log(cfg.history_median), cfg.rating_history_sigma, size=n_users)
    lengths = np.clip(raw, cfg.history_min, min(cfg.rating_history_max, n // 2)).astype(np.int64)
    lengths = _with_heavy_users(lengths, cfg)
    lengths = np.minimum(lengths, n // 2)  # at most once per item: leave room to draw unseen ones

    total = int(lengths.sum())
    users = np.empty(total, dtype=np.int32)
    items = np.empty(total, dtype=np.int32)
    ratings = np.empty(total, dtype=np.int64)
    stamps = np.empty(total, dtype=np.int64)
    pos = 0
    for u in range(n_users):
        k = int(rng.integers(2, 5))
        interests = np.where(
            rng.random(k) < 0.5, seg_cats[segment[u], rng.integers(0, 3, size=k)], rng.integers(0, cfg.n_categories, size=k)
        )
        cum_weights = np.cumsum(rng.dirichlet(np.ones(k))).tolist()
        seen: set[int] = set()
        t = _START + int(rng.integers(0, 365 * _DAY))
        prev = -1
        first = pos
        for _ in range(int(lengths[u])):
            item = -1
            for _attempt in range(20):  # each item at most once per user
                r = rng.random()
                if prev >= 0 and r < cfg.p_successor:
                    cand = int(successor[prev])
                elif prev >= 0 and r < cfg.p_successor + cfg.p_category_transition:
                    cand = sampler.in_category(int(next_category[cat.category[prev]]), rng.random())
                elif r < 0.97:
                    cand = sampler.in_category(int(interests[min(bisect.bisect_right(cum_weights, rng.random()), k - 1)]), rng.random())
                else:
                    cand = sampler.anywhere(rng.random())
                if cand not in seen:
                    item = cand
                    break
            while item < 0 or item in seen:
                item = int(rng.integers(0, n))
            seen.add(item)
            # a sitting: most ratings share the previous one's timestamp; new sittings days apart
            if pos > first and rng.random() < cfg.rating_burst:
                pass
            elif rng.random() < 0.15:
                t += int(rng.exponential(7 * _DAY)) + 3600
            else:
                t += int(rng.exponential(120)) + 1
            users[pos], items[pos], stamps[pos] = u, item, t
            prev = item
            pos += 1
        # ratings 1-5: higher on the user's interest categories
        liked = np.isin(cat.category[items[first:pos]], interests)
        ratings[first:pos] = np.clip(np.rint(rng.normal(3.2 + 0.8 * liked, 1.0)), 1, 5)
        # ratings of one sitting carry no order (sorting by time leaves them in file order): shuffle
        _shuffle_ties(items, ratings, stamps, first, pos, rng)

    events = Events(users, items, RATING_TO_ACTION[ratings], stamps, np.zeros(total, dtype=np.int8), n_users)
    heavy = f"-heavy{cfg.heavy_users}" if cfg.heavy_users > 0 else ""
    return Dataset(
        name=f"ratings-{n}x{n_users}-seed{cfg.seed}{heavy}",
        item_metadata=cat,
        users=Users(segment=segment, main_device=np.zeros(n_users, dtype=np.int8), n_segments=cfg.n_segments),
        events=events,
    )


def _shuffle_ties(items: np.ndarray, ratings: np.ndarray, stamps: np.ndarray, start: int, end: int, rng: np.random.Generator) -> None:
    """Shuffle, in place, each run of equal timestamps in ``[start, end)``."""
    ts = stamps[start:end]
    if ts.size < 2:
        return
    bounds = np.flatnonzero(np.diff(ts) != 0) + 1
    for s, e in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [ts.size]])):
        if e - s > 1:
            perm = start + s + rng.permutation(e - s)
            items[start + s : start + e] = items[perm].copy()
            ratings[start + s : start + e] = ratings[perm].copy()
