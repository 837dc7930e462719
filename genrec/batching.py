"""Batches capped by tokens: what keeps offline memory bounded whatever the history lengths.

A padded batch costs (requests x longest sequence) tokens for its activations and, in dense
attention, (requests x longest^2) for its scores. Grouping sequences of similar length and
capping each group by ``budget`` tokens bounds the first; encoding histories above a threshold
block by block (``genrec.reference``) bounds the second.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def event_tokens(n_events: int) -> int:
    """Encoder tokens of a history: USER + ITEM/ACTION per event + CTX."""
    return 2 * int(n_events) + 2


def chunk_by_tokens(sorted_tokens: Sequence[int], budget: int, max_batch: int) -> list[slice]:
    """Consecutive slices of an ascending sequence of token counts such that each slice's size
    times its longest member is at most ``budget`` (a member longer than the budget goes alone)
    and no slice holds more than ``max_batch`` members."""
    out, start = [], 0
    n = len(sorted_tokens)
    while start < n:
        end = start + 1
        while end < n and end - start < max_batch and (end - start + 1) * max(int(sorted_tokens[end]), 1) <= budget:
            end += 1
        out.append(slice(start, end))
        start = end
    return out


def token_batches(tokens: Sequence[int], budget: int, max_batch: int) -> list[np.ndarray]:
    """Indices grouped by length (shortest first, stable), each group within ``budget`` tokens."""
    t = np.asarray(tokens, dtype=np.int64)
    order = np.argsort(t, kind="stable")
    return [order[s] for s in chunk_by_tokens(t[order].tolist(), budget, max_batch)]
