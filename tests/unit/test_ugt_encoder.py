"""The encoder's causal state: a cached prefix extended by new events equals encoding the whole
history at once, with compression on and off. Tolerance 1e-4: the two paths sum the same terms
in a different order and batch shape (fp32 rounding only)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from genrec.data.schema import History
from genrec.models.ugt_encoder import ACTION, ITEM, GroupLayerNorm, UGTEncoder, build_tokens
from genrec.settings import EncoderConfig

N_ITEMS = 40
CFG = EncoderConfig(d_model=16, n_heads=2, recent_tokens=8, block_tokens=4, slots=2, dropout=0.0)
TOL = 1e-4


@pytest.fixture(scope="module")
def enc():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    return UGTEncoder(CFG, rng.random((N_ITEMS, 6)).astype(np.float32), rng.integers(0, 4, (N_ITEMS, 3)), (4, 4, 4), 3, 3).eval()


def history(rng, n):
    return History(
        rng.integers(0, N_ITEMS, n), rng.integers(0, 4, n), np.sort(rng.integers(0, 10**6, n)) + 1_700_000_000, rng.integers(0, 3, n)
    )


def incremental(enc, h, pieces, compression):
    s = enc.init_state()
    start = 0
    for size in pieces:
        end = min(len(h), start + size)
        enc.extend(s, History(h.item[start:end], h.action[start:end], h.timestamp[start:end], h.device[start:end]), 1, compression)
        start = end
    enc.extend(s, History(h.item[start:], h.action[start:], h.timestamp[start:], h.device[start:]), 1, compression)
    return s


@settings(deadline=None, max_examples=12)
@given(st.integers(0, 40), st.lists(st.integers(1, 9), max_size=12), st.booleans(), st.integers(0, 999))
def test_cached_extension_equals_whole_history(enc, n, pieces, compression, seed):
    rng = np.random.default_rng(seed)
    h = history(rng, n)
    t_req = 1_702_000_000
    with torch.no_grad():
        dense = enc.forward_dense(build_tokens([h], [1], [2], [t_req]), compression=compression)
    s = incremental(enc, h, pieces, compression)
    q = enc.query(s, 2, t_req, 1, compression)
    assert torch.allclose(dense.user, q.user, atol=TOL)
    present = dense.memory_logw[0] > -np.inf
    d_mem = dense.memory[0][present]
    # same memory entries (whole vectors and their log-weights) at TOL; the order may differ, so
    # pair them by a minimum-cost matching on the max-abs distance, then check every pair
    assert d_mem.shape[0] == q.memory.shape[1]
    want = torch.cat([d_mem, dense.memory_logw[0][present][:, None]], 1).numpy()
    got = torch.cat([q.memory[0], q.memory_logw[0][:, None]], 1).numpy()
    dist = np.abs(want[:, None, :] - got[None, :, :]).max(-1)
    rows, cols = linear_sum_assignment(dist)
    assert dist[rows, cols].max() <= TOL, f"memory entries differ by {dist[rows, cols].max():.2e}"


def test_compression_bounds_state_and_memory(enc):
    rng = np.random.default_rng(1)
    sizes = []
    for n in (20, 80, 300):
        s = incremental(enc, history(rng, n), [7] * 100, True)
        q = enc.query(s, 0, 1_702_000_000, 0, True)
        sizes.append((s.nbytes(), q.memory.shape[1]))
    bound = CFG.recent_tokens + CFG.block_tokens + CFG.slots + 2
    assert all(m <= bound for _, m in sizes)
    assert sizes[1][0] == sizes[2][0]  # state size stops growing once the window is full
    off = incremental(enc, history(rng, 300), [50] * 10, False)
    assert off.nbytes() > 10 * sizes[2][0]  # without compression the state grows with L


@pytest.mark.parametrize("compression", [True, False])
def test_encoder_is_causal(enc, compression):
    """Changing event 10 leaves every output before its tokens unchanged."""
    rng = np.random.default_rng(2)
    h = history(rng, 14)
    h2 = History(h.item.copy(), h.action, h.timestamp, h.device)
    h2.item[10] = (h2.item[10] + 1) % N_ITEMS
    with torch.no_grad():
        a = enc.forward_dense(build_tokens([h], [1], [2], [1_702_000_000]), compression=compression).memory[0]
        b = enc.forward_dense(build_tokens([h2], [1], [2], [1_702_000_000]), compression=compression).memory[0]
    first_changed = 1 + 2 * 10
    assert torch.equal(a[:first_changed], b[:first_changed])
    assert not torch.allclose(a[first_changed], b[first_changed])


def test_group_layer_norm_uses_each_groups_parameters():
    gln = GroupLayerNorm(4, 4)
    with torch.no_grad():
        gln.weight[ITEM] = 2.0
        gln.bias[ACTION] = 5.0
    x = torch.randn(1, 2, 4)
    out = gln(x, torch.tensor([[ITEM, ACTION]]))
    base = torch.nn.functional.layer_norm(x, (4,))
    assert torch.allclose(out[0, 0], 2 * base[0, 0])
    assert torch.allclose(out[0, 1], base[0, 1] + 5)


def test_empty_history_cold_start(enc):
    q = enc.query(enc.init_state(), 1, 1_702_000_000, 2, True)
    assert q.user.shape == (1, CFG.d_model) and torch.isfinite(q.user).all()
    assert q.memory.shape[1] == 2  # USER and CTX
