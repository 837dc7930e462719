"""Encoder states in a real Redis: shared across instances, hit = miss, Redis down = miss."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from genrec.data.split import leave_last_out
from genrec.ensemble.encoder_cache import EncoderCache
from genrec.ensemble.request_types import RecommendRequest  # noqa: F401
from genrec.ensemble.state_store import RedisEncoderCache
from genrec.evaluate import dataset_of
from genrec.heldout import heldout_requests
from genrec.reference import ReferencePipeline

pytestmark = pytest.mark.integration
pytest.importorskip("redis")


@pytest.fixture(scope="module")
def requests_(tiny_bundle):
    ds = dataset_of(tiny_bundle)
    split = leave_last_out(ds.events)
    reqs, _ = heldout_requests(ds, split, split.eligible_users[:12], tiny_bundle.cfg.pipeline)
    return [r for r in reqs if len(r.history) > 3]


def _with_user(r: RecommendRequest, uid: str, cut: int = 0) -> RecommendRequest:
    return replace(r, history=r.history.head(len(r.history) - cut), user_id=uid)


def test_a_state_written_by_one_instance_is_a_hit_for_another(tiny_bundle, requests_, redis_url):
    a = ReferencePipeline(tiny_bundle, encoder_cache=RedisEncoderCache(redis_url, ttl_s=60))
    b = ReferencePipeline(tiny_bundle, encoder_cache=RedisEncoderCache(redis_url, ttl_s=60))
    cold = ReferencePipeline(tiny_bundle)
    for i, r in enumerate(requests_):
        a.recommend(_with_user(r, f"shared-{i}", cut=2))  # instance a sees the earlier visit
        got = b.recommend(_with_user(r, f"shared-{i}"))  # instance b: 2 new events on a's state
        want = cold.recommend(r)
        np.testing.assert_array_equal(got.items, want.items)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-4)
    assert b.encoder_cache.stats.hits == len(requests_) and b.encoder_cache.stats.misses == 0


def test_redis_and_in_process_caches_give_the_same_states(tiny_bundle, requests_, redis_url):
    mem = ReferencePipeline(tiny_bundle, encoder_cache=EncoderCache(2**30))
    red = ReferencePipeline(tiny_bundle, encoder_cache=RedisEncoderCache(redis_url, ttl_s=60))
    for i, r in enumerate(requests_[:4]):
        for cut in (3, 1, 0):
            x, y = mem.recommend(_with_user(r, f"same-{i}", cut)), red.recommend(_with_user(r, f"same-{i}", cut))
            np.testing.assert_array_equal(x.items, y.items)


def test_an_unreachable_redis_is_a_miss_not_a_failure(tiny_bundle, requests_):
    from genrec.runtime.ports import free_port

    down = RedisEncoderCache(f"redis://127.0.0.1:{free_port()}/0", ttl_s=60)
    pipe = ReferencePipeline(tiny_bundle, encoder_cache=down)
    r = requests_[0]
    got = pipe.recommend(_with_user(r, "nobody"))
    np.testing.assert_array_equal(got.items, ReferencePipeline(tiny_bundle).recommend(r).items)
    assert down.stats.errors >= 1 and down.stats.misses == 1


def test_states_of_other_encoder_weights_are_never_read(tiny_bundle, requests_, redis_url, tmp_path):
    """Two recommend versions share one Redis during a canary: each must see only its own states."""
    from genrec.ensemble.state_store import encoder_tag

    old, new = tmp_path / "old.onnx", tmp_path / "new.onnx"
    old.write_bytes(b"weights of version 1")
    new.write_bytes(b"weights of version 2")
    assert encoder_tag(old) != encoder_tag(new) and encoder_tag(old) == encoder_tag(old)
    v1 = ReferencePipeline(tiny_bundle, encoder_cache=RedisEncoderCache(redis_url, ttl_s=60, weights=encoder_tag(old)))
    v2 = ReferencePipeline(tiny_bundle, encoder_cache=RedisEncoderCache(redis_url, ttl_s=60, weights=encoder_tag(new)))
    r = _with_user(requests_[0], "canary-user")
    v1.recommend(r)
    v2.recommend(r)
    assert v1.encoder_cache.stats.misses == 1 and v2.encoder_cache.stats.misses == 1 and v2.encoder_cache.stats.hits == 0
    v2.recommend(r)
    assert v2.encoder_cache.stats.hits == 1
