"""ANN retrieval behind a small protocol: exact search here, Milvus on the serving path."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class AnnIndex(Protocol):
    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product for each row of ``vectors`` (R, d): ids (R, k), scores (R, k)."""
        ...


class ExactIndex:
    """Brute-force inner-product search: the reference (a flat Milvus index returns the same)."""

    def __init__(self, item_vectors: np.ndarray) -> None:
        self.vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.vectors.shape[0])
        scores = np.atleast_2d(vectors).astype(np.float32) @ self.vectors.T
        part = (
            np.argpartition(-scores, k - 1, axis=1)[:, :k]
            if k < scores.shape[1]
            else np.tile(np.arange(scores.shape[1]), (scores.shape[0], 1))
        )
        s = np.take_along_axis(scores, part, axis=1)
        order = np.argsort(-s, axis=1, kind="stable")
        return np.take_along_axis(part, order, axis=1).astype(np.int64), np.take_along_axis(s, order, axis=1)


def search_excluding(index: AnnIndex, vectors: np.ndarray, k: int, excluded: list[np.ndarray | None]) -> list[np.ndarray]:
    """Top-k per row with each row's excluded items removed (over-fetches by the exclusion count)."""
    extra = max((0 if e is None else len(e)) for e in excluded) if excluded else 0
    ids, _ = index.search(vectors, k + extra)
    out = []
    for r in range(ids.shape[0]):
        row = ids[r][ids[r] >= 0]  # an index may pad short result rows with -1
        ex = excluded[r]
        if ex is not None and len(ex):
            row = row[~np.isin(row, ex)]
        out.append(row[:k])
    return out
