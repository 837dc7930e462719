"""The 1000 -> 100 -> 10 cascade: merge generated and ANN candidates, pre-rank, rank.

Pure numpy, shared by the PyTorch reference pipeline and the Triton ``recommend`` model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from genrec.ensemble.beam_search import Generated
from genrec.ensemble.ranking_features import ItemTable, ranking_features
from genrec.ensemble.request_types import RecommendRequest, RequestOptions
from genrec.ensemble.transitions import Transitions

NOT_GENERATED_RANK = 10_000  # beam rank given to items that only ANN found
COLD_START_POPULAR = 100  # popular items added to the candidates when the history is empty


@dataclass(frozen=True)
class Candidates:
    items: np.ndarray  # (n,) int64, unique
    gen_logprob: np.ndarray  # (n,) float64, filled for ANN-only items (see merge)
    beam_rank: np.ndarray  # (n,) int64
    in_gen: np.ndarray  # (n,) bool
    ann_sim: np.ndarray  # (n,) float64, exact user . item for every candidate
    in_ann: np.ndarray  # (n,) bool
    in_follow: np.ndarray  # (n,) bool, found by the transitions source
    follow_score: np.ndarray  # (n,) float64, the history's transition votes for every candidate (0: none)

    def __len__(self) -> int:
        return int(self.items.shape[0])

    def take(self, idx: np.ndarray) -> Candidates:
        return Candidates(
            self.items[idx],
            self.gen_logprob[idx],
            self.beam_rank[idx],
            self.in_gen[idx],
            self.ann_sim[idx],
            self.in_ann[idx],
            self.in_follow[idx],
            self.follow_score[idx],
        )


def merge(
    gen: Generated,
    ann_items: np.ndarray,
    user_vec: np.ndarray,
    item_vecs: np.ndarray,
    max_candidates: int,
    follow_items: np.ndarray | None = None,
    transitions: Transitions | None = None,
    history_items: np.ndarray | None = None,
) -> Candidates:
    """Union of ANN, transition and generated items, deduplicated, capped at ``max_candidates``.

    All ANN items are kept, then the transition source's (``follow_items``, best first), then
    generated-only items fill the rest by log-probability. Items outside the beams get a
    generation log-prob one nat below the lowest generated one; every candidate gets its exact
    similarity to the user vector and (with ``transitions``) its transition votes from the history.
    """
    ann_items = np.asarray(ann_items, dtype=np.int64)[:max_candidates]
    follow_items = np.zeros(0, np.int64) if follow_items is None else np.asarray(follow_items, dtype=np.int64)
    follow_only = follow_items[~np.isin(follow_items, ann_items)][: max(0, max_candidates - ann_items.size)]
    found = np.concatenate([ann_items, follow_only])
    gen_only = ~np.isin(gen.items, found)
    room = max(0, max_candidates - found.size)
    order = np.argsort(-gen.logprob[gen_only], kind="stable")[:room]
    items = np.concatenate([found, gen.items[gen_only][order]])
    lp = np.full(items.size, np.nan)
    rank = np.full(items.size, NOT_GENERATED_RANK, dtype=np.int64)
    sorter = np.argsort(items, kind="stable")
    at = np.minimum(np.searchsorted(items[sorter], gen.items), items.size - 1) if items.size else np.zeros(0, dtype=np.int64)
    hit = items[sorter][at] == gen.items if items.size else np.zeros(0, dtype=bool)
    lp[sorter[at[hit]]], rank[sorter[at[hit]]] = gen.logprob[hit], gen.beam_rank[hit]
    in_gen = ~np.isnan(lp)
    floor = (float(gen.logprob.min()) - 1.0) if gen.logprob.size else -1.0
    lp = np.where(in_gen, lp, floor)
    sim = item_vecs[items] @ user_vec
    in_ann = np.zeros(items.size, dtype=bool)
    in_ann[: ann_items.size] = True
    in_follow = np.isin(items, follow_items)
    votes = np.zeros(items.size) if transitions is None or history_items is None else transitions.scores(history_items, items)
    return Candidates(items, lp, rank, in_gen, sim.astype(np.float64), in_ann, in_follow, votes)


def follows_only(c: Candidates, k: int) -> np.ndarray:
    """The transitions source alone (evaluation's row): its candidates by votes, best first."""
    mine = np.flatnonzero(c.in_follow)
    return c.items[mine[np.argsort(-c.follow_score[mine], kind="stable")][:k]]


def prerank_scores(c: Candidates, sim_weight: float) -> np.ndarray:
    """The cheap vectorised pre-rank: generation log-prob plus weighted embedding similarity."""
    return c.gen_logprob + sim_weight * c.ann_sim


# the per-candidate signals the target-aware pre-ranker combines with its attention score
# (genrec.models.target_prerank; the target_prerank graph's ``features`` columns)
PRERANK_FEATURES = ("gen_logprob", "log_beam_rank", "in_gen", "ann_sim", "in_ann", "log_popularity")


def prerank_features(c: Candidates, log_popularity: np.ndarray) -> np.ndarray:
    """(n, len(PRERANK_FEATURES)) float32: the target pre-ranker's feature rows of the candidates."""
    return np.column_stack(
        [c.gen_logprob, np.log1p(c.beam_rank.astype(np.float64)), c.in_gen, c.ann_sim, c.in_ann, log_popularity[c.items]]
    ).astype(np.float32)


# (item_vectors (n, d), features (n, F)) -> (n,) scores of one microbatch against the request's memory
MicrobatchScorer = Callable[[np.ndarray, np.ndarray], np.ndarray]
Prerank = Callable[[Candidates], np.ndarray]  # a request's candidates -> their pre-rank scores


def target_prerank(score: MicrobatchScorer, item_vectors: np.ndarray, log_popularity: np.ndarray, microbatch: int) -> Prerank:
    """The target-aware pre-rank of one request: its candidates in microbatches of ``microbatch``
    (each candidate attends to the request's memory, not to the others, so the split does not
    change a score). ``score`` runs the model (the PyTorch module or the target_prerank graph)."""

    def run(c: Candidates) -> np.ndarray:
        vecs, feats = item_vectors[c.items], prerank_features(c, log_popularity)
        parts = [score(vecs[i : i + microbatch], feats[i : i + microbatch]) for i in range(0, len(c), microbatch)]
        return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)

    return run


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, best first; ties go to the lower index (deterministic)."""
    return np.argsort(-scores, kind="stable")[:k]


def prerank_keep(c: Candidates, scores: np.ndarray, keep: int, follow_keep: int) -> np.ndarray:
    """The pre-rank's kept candidates (indices, best first): up to ``follow_keep`` slots for the
    transition votes (the candidates with the most, if any), the rest by pre-rank score. A quota,
    not a weight: the votes and the pre-rank scores are on scales that a sum would have to tune."""
    voted = np.flatnonzero(c.follow_score > 0)
    reserved = voted[np.argsort(-c.follow_score[voted], kind="stable")[: min(follow_keep, keep)]]
    rest = np.ones(len(c), dtype=bool)
    rest[reserved] = False
    others = np.flatnonzero(rest)
    kept = np.concatenate([reserved, others[top_k(scores[others], keep - reserved.size)]])
    return kept[np.argsort(-scores[kept], kind="stable")]  # one order, by pre-rank score


@dataclass
class CascadeTrace:
    """Intermediate results of one request (for evaluation, ranker training and metrics)."""

    generated: Generated
    candidates: Candidates
    prerank: np.ndarray  # pre-rank score of every candidate
    kept: np.ndarray  # indices into candidates, best first (the 100)
    features: np.ndarray  # ranker features of the kept candidates


def gather(
    gen: Generated,
    ann_items: np.ndarray,
    user_vec: np.ndarray,
    item_vectors: np.ndarray,
    items: ItemTable,
    req: RecommendRequest,
    opts: RequestOptions,
) -> Candidates:
    """The request's candidates from its three sources: ANN, the transitions from its latest
    events (minus its excluded items) and generation (``merge``)."""
    follows = items.transitions
    follow_items = follows.followers(req.history.item, req.excluded, opts.follow_candidates)
    return merge(gen, ann_items, user_vec, item_vectors, opts.max_candidates, follow_items, follows, req.history.item)


def popular_order(items: ItemTable) -> np.ndarray:
    """Items by training popularity, most popular first (the cold-start fallback)."""
    return np.argsort(-items.log_popularity, kind="stable")


def cascade(
    gen: Generated,
    user_vec: np.ndarray,
    ann_items: np.ndarray,
    req: RecommendRequest,
    opts: RequestOptions,
    item_vectors: np.ndarray,
    items: ItemTable,
    prerank_weight: float,
    popular: np.ndarray,
    prerank: Prerank | None = None,
) -> CascadeTrace:
    """Candidates (generated + ANN, + popular items for an empty history) -> pre-rank -> the kept
    ones with their ranker features. The ranker itself runs outside (LightGBM or Triton).
    ``prerank``: the request's target-aware pre-rank (``target_prerank``); None: the dot pre-rank."""
    if len(req.history) == 0:
        pop = popular[: COLD_START_POPULAR + (0 if req.excluded is None else len(req.excluded))]
        if req.excluded is not None:
            pop = pop[~np.isin(pop, req.excluded)]
        ann_items = np.concatenate([ann_items, pop[~np.isin(pop, ann_items)][:COLD_START_POPULAR]])
    cands = gather(gen, ann_items, user_vec, item_vectors, items, req, opts)
    pre = prerank_scores(cands, prerank_weight) if prerank is None or len(cands) == 0 else prerank(cands)
    kept = prerank_keep(cands, pre, opts.prerank_keep, opts.follow_keep)
    feats = ranking_features(cands.take(kept), pre[kept], items, req.history.item, req.history.timestamp, float(req.request_time()))
    return CascadeTrace(gen, cands, pre, kept, feats)
