from dataclasses import dataclass

import numpy as np

from genrec.data.schema import History
from genrec.ensemble.encoder_cache import EncoderCache


@dataclass
class FakeState:  # a narrow stand-in: the cache only needs nbytes()
    size: int

    def nbytes(self) -> int:
        return self.size


def hist(n, seed=0):
    rng = np.random.default_rng(seed)
    return History(rng.integers(0, 9, n), rng.integers(0, 4, n), np.arange(n) * 10, np.zeros(n, np.int64))


def test_hit_on_extended_prefix_and_miss_on_edit():
    cache = EncoderCache(1000)
    h = hist(10)
    cache.store("u", h.head(6), FakeState(100))
    state, n = cache.take("u", h)
    assert state is not None and n == 6
    cache.store("u", h, state)
    edited = History(h.item.copy(), h.action, h.timestamp, h.device)
    edited.item[2] += 1
    assert cache.take("u", edited) == (None, 0)  # a changed past is a miss, not a wrong hit
    assert cache.stats.hits == 1 and cache.stats.misses == 1
    assert cache.take("u", h) == (None, 0)  # the failed take removed the stale entry


def test_lru_eviction_by_bytes():
    cache = EncoderCache(250)
    for u in "abc":
        cache.store(u, hist(3), FakeState(100))
    assert cache.stats.evictions == 1 and cache.stats.bytes == 200 and cache.stats.entries == 2
    assert cache.take("a", hist(3)) == (None, 0)
    s, _ = cache.take("b", hist(3))
    assert s is not None
    cache.store("b", hist(3), s)  # b is now most recent
    cache.store("d", hist(3), FakeState(100))
    assert cache.take("c", hist(3)) == (None, 0)  # c was least recently used
    cache.store("huge", hist(3), FakeState(10_000))  # larger than the cache: not stored
    assert cache.stats.bytes <= 250


def test_encoder_state_survives_serialisation():
    from genrec.data.schema import History
    from genrec.ensemble.encoder_state import EncoderState, Geometry, IncrementalEncoder

    g = Geometry(n_layers=2, d_model=4, block_tokens=2, recent_blocks=1, slots=2, compression=True)
    rng = np.random.default_rng(0)

    def block(feeds):
        n = feeds["item"].size
        return (
            rng.normal(size=(2, n, 4)).astype(np.float32),
            rng.normal(size=(2, n, 4)).astype(np.float32),
            rng.normal(size=(n, 4)).astype(np.float32),
            rng.normal(size=(n, 4)).astype(np.float32),
        )

    enc = IncrementalEncoder(block, g)
    s = enc.init_state()
    n = 9
    enc.extend(s, History(np.arange(n), np.zeros(n, np.int64), 1_700_000_000 + np.arange(n), np.zeros(n, np.int64)), 0)
    assert s.su_count > 0 and s.sl_pos.size > 0  # every part of the state is populated
    t = EncoderState.from_bytes(s.to_bytes())
    for name in EncoderState._ARRAYS:
        np.testing.assert_array_equal(getattr(t, name), getattr(s, name))
        assert getattr(t, name).dtype == getattr(s, name).dtype
    assert (t.n_tokens, t.block, t.su_pos, t.su_time, t.su_count) == (s.n_tokens, s.block, s.su_pos, s.su_time, s.su_count)
