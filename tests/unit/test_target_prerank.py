"""The target-aware pre-ranker (genrec.models.target_prerank) on small random inputs: it starts as
the dot pre-rank, a candidate's score depends on its own row only (so microbatches do not change
it), absent memory entries are ignored, and a short fit learns a target the dot pre-rank misses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genrec.ensemble.cascade import PRERANK_FEATURES, Candidates, prerank_features, prerank_scores, target_prerank
from genrec.models.target_prerank import PrerankList, PrerankSpec, TargetPrerank, fit, load, recall_at, save
from genrec.settings import PipelineConfig

D, F = 8, len(PRERANK_FEATURES)
SPEC = PrerankSpec(D, D, 2, F, D, PRERANK_FEATURES.index("gen_logprob"), PRERANK_FEATURES.index("ann_sim"))


def _candidates(rng: np.random.Generator, n: int) -> Candidates:
    in_gen = rng.random(n) < 0.6
    return Candidates(
        rng.permutation(50)[:n].astype(np.int64),
        np.where(in_gen, -rng.random(n) * 10, -11.0),
        np.where(in_gen, rng.integers(0, 40, n), 10_000).astype(np.int64),
        in_gen,
        rng.normal(size=n),
        ~in_gen | (rng.random(n) < 0.3),
        np.zeros(n, dtype=bool),
        np.zeros(n),
    )


def _trained_looking(seed: int = 0) -> TargetPrerank:
    torch.manual_seed(seed)
    m = TargetPrerank(SPEC, 0.5)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # not the dot-equivalent start
    return m.eval()


def test_untrained_model_ranks_like_the_dot_prerank():
    rng = np.random.default_rng(0)
    c = _candidates(rng, 30)
    vecs, pop = rng.normal(size=(50, D)).astype(np.float32), rng.random(50)
    m = TargetPrerank(SPEC, 0.5).eval()
    got = m.score_request(rng.normal(size=(5, D)), np.zeros(5), vecs[c.items], prerank_features(c, pop))
    np.testing.assert_allclose(got, prerank_scores(c, 0.5), atol=1e-5)


def test_a_candidate_sees_the_history_not_the_other_candidates():
    rng = np.random.default_rng(1)
    c = _candidates(rng, 37)
    vecs, pop = rng.normal(size=(50, D)).astype(np.float32), rng.random(50)
    mem, logw = rng.normal(size=(6, D)).astype(np.float32), np.log(rng.integers(1, 5, 6)).astype(np.float32)
    m = _trained_looking()
    whole = m.score_request(mem, logw, vecs[c.items], prerank_features(c, pop))
    for mb in (1, 7, 37, 256):
        split = target_prerank(lambda v, f: m.score_request(mem, logw, v, f), vecs, pop, mb)(c)
        np.testing.assert_allclose(split, whole, atol=1e-5, err_msg=f"microbatch {mb}")
    # changing the other candidates leaves candidate 0's score alone
    alone = m.score_request(mem, logw, vecs[c.items[:1]], prerank_features(c, pop)[:1])
    np.testing.assert_allclose(alone, whole[:1], atol=1e-5)
    # absent memory entries (log weight -inf: a batch's padding) are not attended to
    padded = m.score_request(
        np.concatenate([mem, rng.normal(size=(3, D))]), np.concatenate([logw, np.full(3, -np.inf)]), vecs[c.items], prerank_features(c, pop)
    )
    np.testing.assert_allclose(padded, whole, atol=1e-5)


def test_a_short_fit_finds_the_target_the_dot_prerank_misses(tmp_path):
    """The target is the candidate closest to the user's memory, while its features say nothing:
    only attention to the history can find it."""
    rng = np.random.default_rng(2)
    vecs = rng.normal(size=(400, D)).astype(np.float32)
    lists = []
    for _ in range(64):
        items = rng.permutation(400)[:40]
        target = int(rng.integers(0, 40))
        mem = (vecs[items[target]] + 0.1 * rng.normal(size=(3, D))).astype(np.float32)
        feats = np.zeros((40, F), np.float32)  # the cheap signals say nothing here
        lists.append(PrerankList(mem, np.zeros(3, np.float32), items, feats, target))
    model, oof, report = fit(lists, vecs, SPEC, 1.0, keep=5, epochs=12, lr=2e-2, batch=8, seed=0, folds=2)
    assert len(oof) == len(lists) and report.epochs > 0
    assert report.oof_recall > report.fold_recall[0] + 0.2, report.as_dict()
    scores = [model.score_request(x.memory, x.memory_logw, vecs[x.items], x.features) for x in lists]
    assert recall_at(scores, lists, 5) >= report.oof_recall
    save(model, tmp_path)
    again = load(tmp_path)
    assert again is not None
    np.testing.assert_array_equal(
        again.score_request(lists[0].memory, lists[0].memory_logw, vecs[lists[0].items], lists[0].features), scores[0]
    )
    assert load(tmp_path / "absent") is None  # a run trained before the pre-ranker


def test_prerank_setting_is_checked():
    assert PipelineConfig().prerank == "dot"
    with pytest.raises(ValueError, match="pipeline.prerank"):
        PipelineConfig(prerank="attention")


def test_the_counted_flops_are_the_matmuls_torch_counts():
    """``flops_per_request`` (the model card's figure) against torch's own FLOP counter on a forward."""
    from torch.utils.flop_counter import FlopCounterMode

    from genrec.models.target_prerank import spec_for

    model = TargetPrerank(spec_for(32, 2)).eval()
    memory, candidates = 17, 50
    args = (
        torch.randn(1, memory, 32),
        torch.zeros(1, memory),
        torch.randn(1, candidates, 32),
        torch.randn(1, candidates, model.spec.n_features),
    )
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*args)
    assert counter.get_total_flops() == model.flops_per_request(memory, candidates)
