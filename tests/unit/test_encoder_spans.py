"""Several encoder blocks per graph call (the cold-start path) against one block per call: the
same state and the same request outputs at 1e-4 (the calls sum the same terms plus exact zeros,
in another batch shape), with up to ``recent_blocks + 1`` times fewer graph calls."""

import numpy as np
import pytest
import torch

from genrec.data.schema import History
from genrec.ensemble.encoder_state import EncoderState, Geometry, IncrementalEncoder, _View, span_blocks, stacked_context
from genrec.models.ugt_encoder import UGTEncoder, build_tokens
from genrec.settings import EncoderConfig

N_ITEMS = 40
CFG = EncoderConfig(d_model=16, n_heads=2, recent_tokens=8, block_tokens=4, slots=2, dropout=0.0)  # Rb = 2: spans of <= 3 blocks
TOL = 1e-4
T_REQ = 1_702_000_000


@pytest.fixture(scope="module")
def enc():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    return UGTEncoder(CFG, rng.random((N_ITEMS, 6)).astype(np.float32), rng.integers(0, 4, (N_ITEMS, 3)), (4, 4, 4), 3, 3).eval()


def history(rng, n):
    return History(
        rng.integers(0, N_ITEMS, n), rng.integers(0, 4, n), np.sort(rng.integers(0, 10**6, n)) + 1_700_000_000, rng.integers(0, 3, n)
    )


def counting(enc, blocks_per_call, compression=True):
    one = enc.incremental(compression)
    calls = []

    def block(feeds):
        calls.append(feeds["pos"].size)
        return one.block(feeds)

    return IncrementalEncoder(block, one.g, blocks_per_call), calls


def encode(inc, h, pieces):
    s = inc.init_state()
    start = 0
    for size in [*pieces, len(h)]:
        end = min(len(h), start + size)
        inc.extend(s, History(h.item[start:end], h.action[start:end], h.timestamp[start:end], h.device[start:end]), 1)
        start = end
    return s


def assert_states_close(a: EncoderState, b: EncoderState) -> None:
    assert (a.n_tokens, a.block, a.su_count) == (b.n_tokens, b.block, b.su_count)
    for name in EncoderState._ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape, name
        np.testing.assert_allclose(x, y, atol=TOL, err_msg=name)


@pytest.mark.parametrize("blocks_per_call", [0, 2, 3, 50])
@pytest.mark.parametrize(("n", "pieces"), [(0, []), (1, []), (5, []), (37, []), (120, []), (120, [3, 50, 1, 9]), (61, [17] * 3)])
def test_spans_give_the_one_block_state_and_outputs(enc, blocks_per_call, n, pieces):
    h = history(np.random.default_rng(n + len(pieces)), n)
    ref, _ = counting(enc, 1)
    new, _ = counting(enc, blocks_per_call)
    a, b = encode(ref, h, pieces), encode(new, h, pieces)
    assert_states_close(a, b)
    qa, qb = ref.query(a, 2, T_REQ, 1), new.query(b, 2, T_REQ, 1)
    np.testing.assert_allclose(qb.user, qa.user, atol=TOL)
    np.testing.assert_allclose(qb.memory, qa.memory, atol=TOL)
    np.testing.assert_array_equal(qb.memory_logw, qa.memory_logw)


def test_spans_match_the_whole_history_at_once(enc):
    h = history(np.random.default_rng(7), 90)
    with torch.no_grad():
        dense = enc.forward_dense(build_tokens([h], [1], [2], [T_REQ]), compression=True)
    new, _ = counting(enc, 0)
    q = new.query(encode(new, h, []), 2, T_REQ, 1)
    np.testing.assert_allclose(q.user, dense.user[0].numpy(), atol=TOL)


@pytest.mark.parametrize("blocks_per_call", [1, 2, 3])
def test_a_cold_history_costs_one_call_per_span(enc, blocks_per_call):
    n_events = 100  # 1 + 2 * 100 tokens = 51 blocks of 4
    inc, calls = counting(enc, blocks_per_call)
    inc.extend(inc.init_state(), history(np.random.default_rng(3), n_events), 1)
    blocks = -(-(1 + 2 * n_events) // CFG.block_tokens)
    assert len(calls) == -(-blocks // blocks_per_call)
    assert max(calls) == blocks_per_call * CFG.block_tokens


def test_span_is_capped_where_the_span_stays_exact():
    g = Geometry.of(CFG)
    assert span_blocks(g, 0) == span_blocks(g, 99) == g.recent_blocks + 1
    assert span_blocks(g, 1) == 1
    with pytest.raises(ValueError, match="blocks_per_call"):
        span_blocks(g, -1)
    off = Geometry.of(CFG, compression=False)
    assert IncrementalEncoder(lambda f: f, off, 0).span == 1  # no blocks: chunks of exact tokens


def test_stacked_context_gives_each_query_its_own_view_only():
    def view(keys, w, queries):
        ctx = {
            "ctx_k": np.full((1, keys, 2), float(w), np.float32),
            "ctx_v": np.zeros((1, keys, 2), np.float32),
            "ctx_w": np.full(keys, w, np.float32),
            "ctx_pos": np.arange(keys, dtype=np.float64),
            "ctx_time": np.zeros(keys),
        }
        return _View(ctx, queries)

    out = stacked_context([view(2, 1.0, 3), view(3, 4.0, 1)])
    assert out["ctx_k"].shape == (1, 5, 2) and out["ctx_pos"].shape == (5,)
    want = np.array([[1, 1, 0, 0, 0]] * 3 + [[0, 0, 4, 4, 4]], np.float32)
    np.testing.assert_array_equal(out["ctx_w"], want)
