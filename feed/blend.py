"""The blend: model candidates -> a positioned page of content and products.

Rules (each unit-tested):
- ad-kind items never appear as organic items; excluded items (seen in this session, hidden,
  disliked) and duplicates are dropped;
- content and products are merged by the model's score for this user;
- at most one product in every ``product_every`` consecutive positions (so, for
  ``product_every >= 2``, never two adjacent), counted across the pages of a session through
  ``last_product`` (the session position of the last product served, or None);
  ``product_every = 0`` serves no products;
- positions are session positions: ``offset``, ``offset + 1``, ...
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from genrec.data.schema import ItemKind


@dataclass(frozen=True)
class Placed:
    item_id: int
    type: str  # "content" | "product"
    score: float
    position: int
    reason: str


def product_allowed(position: int, last_product: int | None, product_every: int) -> bool:
    if product_every <= 0:
        return False
    gap = max(product_every, 2)
    return last_product is None or position - last_product >= gap


def blend(
    candidates: Sequence[tuple[int, float]],
    kinds: np.ndarray,
    excluded: Iterable[int],
    count: int,
    product_every: int,
    offset: int = 0,
    last_product: int | None = None,
    reason: str = "Recommended for you",
    product_reason: str = "Picked for you from the shop",
) -> list[Placed]:
    skip = set(int(i) for i in excluded)
    content: list[tuple[int, float]] = []
    products: list[tuple[int, float]] = []
    for item, score in candidates:
        item = int(item)
        if item in skip or not 0 <= item < len(kinds) or kinds[item] == ItemKind.AD:
            continue
        skip.add(item)
        (products if kinds[item] == ItemKind.PRODUCT else content).append((item, float(score)))
    out: list[Placed] = []
    ci = pi = 0
    while len(out) < count:
        pos = offset + len(out)
        can_product = pi < len(products) and product_allowed(pos, last_product, product_every)
        if can_product and (ci >= len(content) or products[pi][1] >= content[ci][1]):
            item, score = products[pi]
            pi += 1
            out.append(Placed(item, "product", score, pos, product_reason))
            last_product = pos
        elif ci < len(content):
            item, score = content[ci]
            ci += 1
            out.append(Placed(item, "content", score, pos, reason))
        else:
            break
    return out


def last_product_position(page: Sequence[Placed], previous: int | None) -> int | None:
    positions = [p.position for p in page if p.type == "product"]
    return positions[-1] if positions else previous


def reason_for(item: int, kinds: np.ndarray, categories: np.ndarray, history_categories: set[int], mode: str) -> str:
    """A short human-readable reason: the path that produced the item and what it matches."""
    if mode == "fallback":
        return "Popular right now"
    if mode == "cold_start":
        return "Popular with new readers" if kinds[item] != ItemKind.PRODUCT else "Popular in the shop"
    if int(categories[item]) in history_categories:
        return f"Because you engaged with category {int(categories[item])}"
    return "Recommended for you" if kinds[item] != ItemKind.PRODUCT else "Picked for you from the shop"
