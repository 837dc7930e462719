"""Item-to-item transitions ("what follows what"): the cascade's third candidate source and two
ranker features.

Counted on training events only: for each pair of one user's events at most ``window`` apart,
the later item *follows* the earlier one. Pairs within a window, not only adjacent ones,
because ratings that share a timestamp come in no meaningful order. Each item keeps its ``top``
followers, weighted by the share of its pairs they take (so memory is ``n_items x top`` at most,
whatever the traffic). At request time the user's latest ``window`` events vote for their
followers: a follower's score is the sum of its weights from those events.

Pure numpy, like the rest of the cascade: the reference pipeline, the evaluation and the Triton
``recommend`` model use the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SMOOTHING = 5.0  # pairs added to each item's total: a follower seen once after a rare item weighs little


@dataclass(frozen=True)
class Transitions:
    """Each item's followers in CSR form: ``items[indptr[i]:indptr[i+1]]``, best first."""

    indptr: np.ndarray  # (n_items + 1,) int64
    items: np.ndarray  # (nnz,) int64
    weight: np.ndarray  # (nnz,) float32, in (0, 1)
    window: int  # the latest events that vote at request time (the pair distance counted)

    @classmethod
    def empty(cls, n_items: int, window: int = 1) -> Transitions:
        return cls(np.zeros(n_items + 1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), window)

    @classmethod
    def count(cls, items: np.ndarray, users: np.ndarray, n_items: int, window: int, top: int) -> Transitions:
        """From an event log grouped by user in time order (``items``, ``users`` aligned)."""
        items = np.asarray(items, np.int64)
        users = np.asarray(users, np.int64)
        before, after = [], []
        for lag in range(1, window + 1):
            same = users[lag:] == users[:-lag]
            before.append(items[:-lag][same])
            after.append(items[lag:][same])
        a = np.concatenate(before) if before else np.zeros(0, np.int64)
        b = np.concatenate(after) if after else np.zeros(0, np.int64)
        keep = a != b
        pairs, counts = np.unique(a[keep] * n_items + b[keep], return_counts=True)
        src, dst = pairs // n_items, pairs % n_items
        totals = np.bincount(src, weights=counts, minlength=n_items)
        order = np.lexsort((dst, -counts, src))  # per source: most frequent first, ties by item id
        src, dst, counts = src[order], dst[order], counts[order]
        starts = np.searchsorted(src, np.arange(n_items))
        rank = np.arange(src.size) - starts[src]
        kept = rank < top
        src, dst, counts = src[kept], dst[kept], counts[kept]
        indptr = np.concatenate([[0], np.cumsum(np.bincount(src, minlength=n_items))]).astype(np.int64)
        weight = (counts / (totals[src] + SMOOTHING)).astype(np.float32)
        return cls(indptr, dst.astype(np.int64), weight, window)

    @property
    def n_items(self) -> int:
        return int(self.indptr.size - 1)

    def votes(self, history_items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(items, scores) that the latest ``window`` history events vote for, items ascending."""
        recent = np.asarray(history_items, np.int64)[-self.window :]
        recent = recent[(recent >= 0) & (recent < self.n_items)]
        if recent.size == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        parts = [np.arange(self.indptr[h], self.indptr[h + 1]) for h in recent]
        at = np.concatenate(parts)
        found, inverse = np.unique(self.items[at], return_inverse=True)
        return found, np.bincount(inverse, weights=self.weight[at].astype(np.float64), minlength=found.size)

    def scores(self, history_items: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """(n,) each candidate's vote total from the latest history events (0: none)."""
        found, score = self.votes(history_items)
        candidates = np.asarray(candidates, np.int64)
        if found.size == 0 or candidates.size == 0:
            return np.zeros(candidates.size)
        at = np.minimum(np.searchsorted(found, candidates), found.size - 1)
        return np.where(found[at] == candidates, score[at], 0.0)

    def followers(self, history_items: np.ndarray, excluded: np.ndarray, limit: int) -> np.ndarray:
        """At most ``limit`` items the latest history events vote for, best first (ties: lower
        id), minus ``excluded`` and minus the voting events' own items."""
        found, score = self.votes(history_items)
        drop = np.isin(found, excluded) | np.isin(found, np.asarray(history_items)[-self.window :])
        found, score = found[~drop], score[~drop]
        return found[np.lexsort((found, -score))][:limit]

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays saved beside the item table (``from_arrays`` reads them back)."""
        return {
            "follow_indptr": self.indptr,
            "follow_items": self.items,
            "follow_weight": self.weight,
            "follow_window": np.asarray(self.window),
        }

    @classmethod
    def from_arrays(cls, z, n_items: int) -> Transitions:
        """From ``arrays()``'s keys; a table saved before transitions existed has none (empty)."""
        if "follow_indptr" not in z:
            return cls.empty(n_items)
        return cls(z["follow_indptr"], z["follow_items"], z["follow_weight"], int(z["follow_window"]))
