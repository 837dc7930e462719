"""(user, candidate) features for the LightGBM ranker. One definition, used to train the ranker,
by the reference pipeline and by the Triton model, so the three cannot drift."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from genrec.ensemble.transitions import Transitions

if TYPE_CHECKING:
    from genrec.ensemble.cascade import Candidates

FEATURE_NAMES = (
    "gen_logprob",
    "beam_rank",
    "in_gen",
    "ann_sim",
    "in_ann",
    "log_popularity",
    "category_affinity",
    "author_affinity",
    "category_recency_log_min",
    "same_category_as_last",
    "same_author_as_last",
    "kind",
    "seen_before",
    "prerank_score",
    "follow_score",
    "in_follow",
)
N_FEATURES = len(FEATURE_NAMES)
AFFINITY_WINDOW = 50  # the latest events that define a user's category/author affinity
NEVER = 1e6  # recency (minutes) for a category the user never touched


@dataclass(frozen=True)
class ItemTable:
    """Per-item side data the features need (published beside the models)."""

    category: np.ndarray  # (n,) int
    author: np.ndarray  # (n,) int
    kind: np.ndarray  # (n,) int
    log_popularity: np.ndarray  # (n,) float, log1p(training interactions)
    n_categories: int
    follows: Transitions | None = None  # item-to-item transitions (None: a table without them)

    @property
    def transitions(self) -> Transitions:
        return self.follows if self.follows is not None else Transitions.empty(int(self.category.shape[0]))

    def arrays(self) -> dict[str, Any]:
        """The columns saved in ``item_table.npz`` and the catalogue (``from_arrays`` reads them)."""
        cols = {
            "category": self.category,
            "author": self.author,
            "kind": self.kind,
            "log_popularity": self.log_popularity,
            "n_categories": self.n_categories,
        }
        return {**cols, **self.transitions.arrays()}

    @classmethod
    def from_arrays(cls, z: Mapping[str, Any]) -> ItemTable:
        n = int(z["category"].shape[0])
        return cls(z["category"], z["author"], z["kind"], z["log_popularity"], int(z["n_categories"]), Transitions.from_arrays(z, n))


def ranking_features(
    c: Candidates, prerank: np.ndarray, items: ItemTable, history_items: np.ndarray, history_time: np.ndarray, now: float
) -> np.ndarray:
    """Feature matrix (n_candidates, N_FEATURES) float32 for one request."""
    n = len(c)
    cand_cat, cand_author = items.category[c.items], items.author[c.items]
    recent = history_items[-AFFINITY_WINDOW:]
    if recent.size:
        cats, authors = items.category[recent], items.author[recent]
        cat_aff = (cats[None, :] == cand_cat[:, None]).mean(axis=1)
        auth_aff = (authors[None, :] == cand_author[:, None]).mean(axis=1)
        last_seen = np.full(items.n_categories, -np.inf)  # latest time the user touched each category
        np.maximum.at(last_seen, items.category[history_items], history_time.astype(np.float64))
        has = np.isfinite(last_seen[cand_cat])
        recency = np.where(has, np.log1p(np.maximum(0.0, now - last_seen[cand_cat]) / 60.0), np.log1p(NEVER))
        last = history_items[-1]
        same_cat = cand_cat == items.category[last]
        same_author = cand_author == items.author[last]
        seen = np.isin(c.items, history_items)
    else:
        cat_aff = auth_aff = np.zeros(n)
        recency = np.full(n, np.log1p(NEVER))
        same_cat = same_author = seen = np.zeros(n, dtype=bool)
    return np.column_stack(
        [
            c.gen_logprob,
            c.beam_rank,
            c.in_gen,
            c.ann_sim,
            c.in_ann,
            items.log_popularity[c.items],
            cat_aff,
            auth_aff,
            recency,
            same_cat,
            same_author,
            items.kind[c.items],
            seen,
            prerank,
            c.follow_score,
            c.in_follow,
        ]
    ).astype(np.float32)
