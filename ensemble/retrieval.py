"""ANN retrieval behind a small protocol: exact search here, Milvus on the serving path."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

log = logging.getLogger("genrec.ann")


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


class FailSoftIndex:
    """An ``AnnIndex`` that answers no neighbours while the index behind it fails (Milvus down, the
    milvus-lite process killed, a server URI that stops answering), so ``recommend`` is served from
    generation alone instead of failing; ``failures`` counts those searches (the
    ``genrec_ann_unavailable_total`` metric). The index is rebuilt (``make``) at most every
    ``retry_s`` until it answers again. It is built eagerly: a model version whose index cannot be
    built at load does not load (the previous version keeps serving)."""

    def __init__(
        self,
        make: Callable[[], AnnIndex],
        retry_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        build_attempts: int = 3,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._make, self.retry_s, self._clock = make, retry_s, clock
        self.index: AnnIndex | None = self._first_build(build_attempts, sleep)
        self.failures = 0
        self._retry_at = 0.0

    def _first_build(self, attempts: int, sleep: Callable[[float], None]) -> AnnIndex:
        # milvus-lite can fail to start when several instances start at once (two recommend
        # versions loading together: "Mmap manager has not been init"); a second try succeeds
        for attempt in range(1, attempts + 1):
            try:
                return self._make()
            except Exception as e:
                if attempt == attempts:
                    raise
                log.warning("building the ANN index failed (%s: %s); try %d of %d in 1 s", type(e).__name__, e, attempt + 1, attempts)
                sleep(1.0)
        raise AssertionError("unreachable")

    def _unavailable(self, rows: int, why: str) -> tuple[np.ndarray, np.ndarray]:
        self.failures += 1
        if self.failures == 1 or self.failures % 100 == 0:
            log.warning("ANN unavailable (%s): serving from generation alone (%d searches so far)", why, self.failures)
        return np.zeros((rows, 0), dtype=np.int64), np.zeros((rows, 0), dtype=np.float32)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        rows = np.atleast_2d(vectors).shape[0]
        if self.index is None:
            if self._clock() < self._retry_at:
                return self._unavailable(rows, "waiting to rebuild")
            self._retry_at = self._clock() + self.retry_s
            try:
                self.index = self._make()
                log.warning("ANN index rebuilt after %d failed searches", self.failures)
            except Exception as e:
                return self._unavailable(rows, f"rebuild failed: {type(e).__name__}: {e}")
        try:
            return self.index.search(vectors, k)
        except Exception as e:
            self.index, self._retry_at = None, self._clock() + self.retry_s
            return self._unavailable(rows, f"{type(e).__name__}: {e}")

    def close(self) -> None:
        close = getattr(self.index, "close", None)
        if close is not None:
            close()
