"""Several encoder blocks per graph call (the cold-start path) against one block per call: the
same state and the same request outputs at 1e-4 (the calls sum the same terms plus exact zeros,
in another batch shape), with up to ``recent_blocks + 1`` times fewer graph calls."""

import numpy as np
import pytest
import torch

from genrec.data.schema import History
from genrec.ensemble.encoder_state import EncoderState, Geometry, IncrementalEncoder, span_blocks
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


def recorded_calls(enc, blocks_per_call, h):
    one = enc.incremental(True)
    feeds = []

    def block(f):
        feeds.append({k: np.array(v) for k, v in f.items()})
        return one.block(f)

    inc = IncrementalEncoder(block, one.g, blocks_per_call)
    inc.extend(inc.init_state(), h, 1)
    return feeds


def seen(feeds, row):
    """(position, weight, key vector) of every key a query row gives a weight, sorted by position."""
    w = feeds["ctx_w"][row]
    idx = np.flatnonzero(w)
    order = np.argsort(feeds["ctx_pos"][idx], kind="stable")
    idx = idx[order]
    return feeds["ctx_pos"][idx], w[idx], feeds["ctx_k"][:, idx]


def test_merged_context_gives_each_query_exactly_its_one_block_view(enc):
    h = history(np.random.default_rng(11), 120)
    one_block, spans = recorded_calls(enc, 1, h), recorded_calls(enc, 0, h)
    assert len(spans) < len(one_block)
    by_pos = {int(p): (f, r) for f in spans for r, p in enumerate(f["pos"])}
    for f in one_block:
        for r, p in enumerate(f["pos"]):
            g, gr = by_pos[int(p)]
            want, got = seen(f, r), seen(g, gr)
            cached = want[0] < g["pos"][0]  # the span's earlier blocks are new tokens of its call, not context
            want = (want[0][cached], want[1][cached], want[2][:, cached])
            np.testing.assert_array_equal(got[0], want[0])  # the same keys (positions)
            np.testing.assert_array_equal(got[1], want[1])  # with the same weights
            np.testing.assert_allclose(got[2], want[2], atol=1e-6)  # computed in calls of other shapes: rounding only
    # the union stays small: a span's context is not one whole view per block
    biggest_view = max(f["ctx_pos"].size for f in one_block)
    assert max(f["ctx_pos"].size for f in spans) <= biggest_view + 2 * span_blocks(Geometry.of(CFG), 0)
