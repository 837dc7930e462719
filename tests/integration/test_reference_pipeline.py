"""The PyTorch reference pipeline on a freshly trained `tiny` run."""

from dataclasses import replace

import numpy as np
import pytest

from genrec.data.split import leave_last_out
from genrec.ensemble.encoder_cache import EncoderCache
from genrec.errors import HistoryTooLongError, InvalidValueError, UnknownItemError
from genrec.evaluate import dataset_of
from genrec.heldout import heldout_requests
from genrec.reference import ReferencePipeline

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def requests_(tiny_bundle):
    ds = dataset_of(tiny_bundle)
    split = leave_last_out(ds.events)
    reqs, targets = heldout_requests(ds, split, split.eligible_users[:40], tiny_bundle.cfg.pipeline)
    return reqs, targets


def test_recommend_returns_k_unique_catalogue_items(tiny_bundle, requests_):
    pipe = ReferencePipeline(tiny_bundle)
    for req in requests_[0][:5]:
        rec = pipe.recommend(req)
        assert len(rec.items) == tiny_bundle.cfg.pipeline.final_k
        assert np.unique(rec.items).size == len(rec.items)
        assert rec.items.min() >= 0 and rec.items.max() < tiny_bundle.n_items
        assert np.all(np.diff(rec.scores) <= 0)
        assert rec.stage_counts["candidates"] <= tiny_bundle.cfg.pipeline.max_candidates
        assert rec.stage_counts["preranked"] == tiny_bundle.cfg.pipeline.prerank_keep
        assert set(rec.stage_ms) == {"encode", "generate", "retrieve", "prerank", "rank"}


def test_kv_cache_gives_the_same_results(tiny_bundle, requests_):
    """Beam search with the decoder KV cache equals the naive recompute-everything decoder."""
    reqs = requests_[0][:12]
    on, off = ReferencePipeline(tiny_bundle, kv_cache=True), ReferencePipeline(tiny_bundle, kv_cache=False)
    enc = on.encode(reqs)
    g_on, _ = on.generate(enc, reqs)
    g_off, _ = off.generate(enc, reqs)
    for a, b in zip(g_on, g_off):
        assert np.array_equal(a.items, b.items)
        np.testing.assert_allclose(a.logprob, b.logprob, atol=1e-4)
    assert [on.recommend(r).items.tolist() for r in reqs[:4]] == [off.recommend(r).items.tolist() for r in reqs[:4]]


def test_encoder_cache_hit_equals_miss(tiny_bundle, requests_):
    cached = ReferencePipeline(tiny_bundle, encoder_cache=EncoderCache(64 << 20))
    plain = ReferencePipeline(tiny_bundle)
    for i, req in enumerate(requests_[0][:6]):
        h = req.history
        if len(h) < 4:
            continue
        early = replace(req, history=h.head(len(h) - 3), user_id=f"u{i}")
        cached.recommend(early)  # miss: builds and stores the state for the prefix
        full = replace(req, user_id=f"u{i}")
        hit = cached.recommend(full)  # hit: only the 3 new events are encoded
        assert hit.items.tolist() == plain.recommend(req).items.tolist()
    assert cached.encoder_cache.stats.hits >= 3


def test_batch_equals_single(tiny_bundle, requests_):
    pipe = ReferencePipeline(tiny_bundle)
    reqs = requests_[0][:8]
    batch = pipe.recommend_batch(reqs)
    for req, (items, _) in zip(reqs, batch):
        assert items.tolist() == pipe.recommend(req).items.tolist()


def test_excluded_items_are_never_generated_or_returned(tiny_bundle, requests_):
    pipe = ReferencePipeline(tiny_bundle)
    req = requests_[0][0]
    first = pipe.recommend(req).items
    excluded = np.concatenate([first, req.history.item[-5:]])
    r2 = replace(req, excluded=excluded)
    enc = pipe.encode([r2])
    gens, _ = pipe.generate(enc, [r2])
    assert not np.isin(gens[0].items, excluded).any()
    assert not np.isin(pipe.recommend(r2).items, excluded).any()


def test_cold_start_empty_history(tiny_bundle):
    pipe = ReferencePipeline(tiny_bundle)
    req = pipe.validate([], [], [], [], segment=1, ctx_device=0)
    rec = pipe.recommend(replace(req, ctx_time=1_767_225_600))
    assert len(rec.items) == 10 and np.unique(rec.items).size == 10
    assert len(req.history) == 0


def test_validate_maps_bad_input_to_typed_errors(tiny_bundle):
    pipe = ReferencePipeline(tiny_bundle)
    n = tiny_bundle.n_items
    with pytest.raises(UnknownItemError):
        pipe.validate([n + 5], [0], [1_700_000_000], [0])
    with pytest.raises(HistoryTooLongError):
        m = tiny_bundle.cfg.pipeline.max_history_events + 1
        pipe.validate(np.zeros(m, np.int64), np.zeros(m, np.int64), np.arange(m), np.zeros(m, np.int64))
    with pytest.raises(InvalidValueError, match="NaN"):
        pipe.validate([1], [0], [float("nan")], [0])
    with pytest.raises(InvalidValueError, match="beam_width"):
        pipe.validate([1], [0], [1_700_000_000], [0], beam_widths=[-1])
    with pytest.raises(InvalidValueError, match="segment"):
        pipe.validate([1], [0], [1_700_000_000], [0], segment=10**6)
