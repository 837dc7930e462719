"""ANN retrieval behind a small protocol: exact search here, Milvus on the serving path."""

from __future__ import annotations

import logging
import threading
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
    ``genrec_ann_unavailable_total`` metric). The index is rebuilt (``make``) in the background at
    most every ``retry_s`` until it answers again. It is built eagerly: a model version whose index cannot be
    built at load does not load (the previous version keeps serving)."""

    def __init__(
        self,
        make: Callable[[], AnnIndex],
        retry_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        build_attempts: int = 3,
        sleep: Callable[[float], None] = time.sleep,
        spawn: Callable[[Callable[[], None]], None] | None = None,
    ) -> None:
        """``spawn`` runs a rebuild (default: a daemon thread; tests pass a synchronous call)."""
        self._make, self.retry_s, self._clock = make, retry_s, clock
        self._spawn = spawn or (lambda job: threading.Thread(target=job, name="ann-rebuild", daemon=True).start())
        self._rebuilding, self._rebuild_started, self._closed = False, 0.0, False
        self.rebuild_timeout_s = max(30.0, 3 * retry_s)
        self._lock = threading.Lock()
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
        index = self.index
        if index is None:
            now = self._clock()
            # a rebuild that hangs (a server that accepts but never answers) must not stop retries
            stale = self._rebuilding and now - self._rebuild_started > self.rebuild_timeout_s
            if (not self._rebuilding or stale) and now >= self._retry_at:
                self._retry_at, self._rebuilding, self._rebuild_started = now + self.retry_s, True, now
                self._spawn(self._rebuild)
            index = self.index  # set already when the rebuild ran synchronously
            if index is None:
                return self._unavailable(rows, "rebuilding" if self._rebuilding else "waiting to rebuild")
        try:
            return index.search(vectors, k)
        except Exception as e:
            self._discard()
            self._retry_at = self._clock() + self.retry_s
            return self._unavailable(rows, f"{type(e).__name__}: {e}")

    def _rebuild(self) -> None:
        # off the request path: starting milvus-lite and loading the collection takes 1-2 s, which
        # would hold this instance's queue past its timeout; requests meanwhile get no neighbours
        try:
            index = self._make()
        except Exception as e:
            log.warning("rebuilding the ANN index failed (%s: %s); next try in %.0f s", type(e).__name__, e, self.retry_s)
            self._rebuilding = False
            return
        with self._lock:
            closed, adopted = self._closed, self.index is None and not self._closed
            if adopted:
                self.index = index
            self._rebuilding = False
        if adopted:
            log.warning("ANN index rebuilt after %d failed searches", self.failures)
        else:  # closed meanwhile (the model unloaded), or another rebuild won: do not leak this one
            _close_quietly(index, "an ANN index built after close" if closed else "a second rebuilt ANN index")

    def _discard(self) -> None:
        """Drop the failed index, releasing what it holds (a dead milvus-lite server's registration)."""
        with self._lock:
            index, self.index = self.index, None
        _close_quietly(index, "the failed ANN index")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            index, self.index = self.index, None
        close = getattr(index, "close", None)
        if close is not None:
            close()


def _close_quietly(index: object, what: str) -> None:
    close = getattr(index, "close", None)
    if close is not None:
        try:
            close()
        except Exception as e:  # closing a dead connection may fail too; nothing waits for it
            log.warning("closing %s: %s: %s", what, type(e).__name__, e)
