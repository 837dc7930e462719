"""Beam search over 3-level semantic IDs, constrained by the catalogue's prefix trie.

The search is plain numpy over a ``StepModel``: the PyTorch decoder in the reference pipeline,
an ONNX session or a Triton BLS call on the serving path. The step model owns its KV cache;
the search tells it, at each step, which previous beam every new beam continues
(``parents``), so it can reorder its cache by index instead of recomputing it.

Scores are log-probabilities renormalised over the allowed codes (the mask is applied before the
softmax), so no probability mass is spent on IDs that are not in the catalogue or are excluded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from genrec.ensemble.prefix_trie import N_LEVELS, PrefixTrie


class StepModel(Protocol):
    def step(self, step: int, codes: np.ndarray | None, parents: np.ndarray | None) -> np.ndarray:
        """Logits (R, W, K_step) for R requests x W beams.

        ``codes`` (R, W) is each beam's newest code (None at step 0, when W is 1) and
        ``parents`` (R, W) the index of the previous-step beam that each beam extends.
        """
        ...


@dataclass(frozen=True)
class BeamResult:
    codes: np.ndarray  # (R, W, 3)
    logprob: np.ndarray  # (R, W) float64, -inf for dead beams
    leaf: np.ndarray  # (R, W) trie leaf id, -1 for dead beams
    pruned: int  # (beam, code) options masked by the trie over the whole search


def _masked_log_softmax(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    x = np.where(allowed, logits.astype(np.float64), -np.inf)
    m = x.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    z = np.exp(x - m).sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        return np.where(allowed, x - m - np.log(np.where(z > 0, z, 1.0)), -np.inf)


def beam_search(
    model: StepModel,
    trie: PrefixTrie,
    widths: tuple[int, ...],
    n_requests: int,
    excluded: Sequence[np.ndarray | None] | None = None,
) -> BeamResult:
    if len(widths) != N_LEVELS or min(widths) < 1:
        raise ValueError(f"beam widths must be {N_LEVELS} positive ints, got {widths}")
    excluded = excluded or [None] * n_requests
    counts = [trie.counts_without(e) for e in excluded]
    r_idx = np.arange(n_requests)[:, None]
    nodes = np.zeros((n_requests, 1), dtype=np.int64)  # root
    scores = np.zeros((n_requests, 1))
    codes = np.zeros((n_requests, 1, 0), dtype=np.int64)
    parents: np.ndarray | None = None
    pruned = 0
    for step in range(N_LEVELS):
        logits = model.step(step, codes[:, :, -1] if step else None, parents)
        r, w, k = logits.shape
        allowed = np.zeros((r, w, k), dtype=bool)
        child = np.full((r, w, k), -1, dtype=np.int64)
        for req in range(r):
            live = np.flatnonzero(nodes[req] >= 0)
            rows, code, node = trie.expand(step, nodes[req, live], counts[req])
            allowed[req, live[rows], code] = True
            child[req, live[rows], code] = node
        pruned += int(w * k * r - allowed.sum())
        total = (scores[:, :, None] + _masked_log_softmax(logits, allowed)).reshape(r, w * k)
        n_alive = int(np.isfinite(total).sum(axis=1).max())
        width = max(1, min(widths[step], n_alive))
        order = np.argsort(-total, axis=1, kind="stable")[:, :width]
        scores = np.take_along_axis(total, order, axis=1)
        parents, code = order // k, order % k
        nodes = np.where(np.isfinite(scores), child.reshape(r, w * k)[r_idx, order], -1)
        codes = np.concatenate([codes[r_idx, parents], code[:, :, None]], axis=2)
    return BeamResult(codes=codes, logprob=scores, leaf=nodes, pruned=pruned)


@dataclass(frozen=True)
class Generated:
    """One request's generated candidates: items with their beam's log-probability."""

    items: np.ndarray  # (n,) int64
    logprob: np.ndarray  # (n,) float64
    beam_rank: np.ndarray  # (n,) int64, rank of the beam that produced the item


def generated_items(result: BeamResult, trie: PrefixTrie, excluded: Sequence[np.ndarray | None] | None = None) -> list[Generated]:
    """Expand each surviving beam's leaf into its items (a leaf is a small collision group)."""
    out = []
    for req in range(result.leaf.shape[0]):
        live = np.flatnonzero(result.leaf[req] >= 0)
        ex = excluded[req] if excluded else None
        rows, items = trie.items_of(result.leaf[req, live], ex)
        out.append(Generated(items, result.logprob[req, live[rows]], live[rows].astype(np.int64)))
    return out
