import math

import numpy as np
import torch

from genrec.models.moe_decoder import MoE, MoEDecoder
from genrec.settings import DecoderConfig

CFG = DecoderConfig(d_model=16, n_layers=2, n_heads=2, n_experts=4, top_k=2, expert_hidden=24, dropout=0.0)
SIZES = (5, 6, 7)


def test_routed_moe_equals_dense_reference():
    torch.manual_seed(0)
    moe = MoE(16, CFG)
    x = torch.randn(50, 16)
    y, aux = moe(x)
    probs = torch.softmax(moe.gate(x), -1)
    w, i = probs.topk(2, -1)
    w = w / w.sum(-1, keepdim=True)
    dense = torch.stack([torch.nn.functional.silu(x @ moe.w1[e] + moe.b1[e]) @ moe.w2[e] + moe.b2[e] for e in range(4)], 1)  # (T, E, d)
    expect = (dense.gather(1, i[:, :, None].expand(-1, -1, 16)) * w[:, :, None]).sum(1)
    assert torch.allclose(y, expect, atol=1e-5)
    assert aux.item() >= 1.0 - 1e-5  # E * sum f*P is minimised (=1) by perfect balance


def test_cached_steps_equal_uncached_recompute():
    torch.manual_seed(0)
    dec = MoEDecoder(CFG, SIZES, 12).eval()
    r, m = 2, 9
    memory = torch.randn(r, m, 12)
    logw = torch.zeros(r, m)
    logw[1, 5:] = -math.inf  # request 1 has a shorter memory
    logw[0, 0] = math.log(16)  # a compressed slot
    cache = dec.start(memory, logw)
    assert cache.cross_k[0].shape == (r, CFG.n_heads, m, CFG.d_model // CFG.n_heads)  # one copy per request
    l0 = dec.step(cache, 0, None, 1)
    assert torch.allclose(l0, dec.step_uncached(memory, logw, torch.zeros(r, 1, 0, dtype=torch.long)), atol=1e-5)
    rng = np.random.default_rng(0)
    parents = torch.zeros(r, 3, dtype=torch.long)
    c1 = torch.from_numpy(rng.integers(0, SIZES[0], (r, 3)))
    cache.reorder(parents)
    l1 = dec.step(cache, 1, c1, 3)
    assert torch.allclose(l1, dec.step_uncached(memory, logw, c1[:, :, None]), atol=1e-5)
    parents2 = torch.tensor([[2, 0, 0, 1], [1, 1, 2, 0]])
    c2 = torch.from_numpy(rng.integers(0, SIZES[1], (r, 4)))
    cache.reorder(parents2)
    l2 = dec.step(cache, 2, c2, 4)
    prefix = torch.cat([torch.gather(c1, 1, parents2)[:, :, None], c2[:, :, None]], 2)
    assert torch.allclose(l2, dec.step_uncached(memory, logw, prefix), atol=1e-5)
    assert l2.shape == (r, 4, SIZES[2])


def test_teacher_forcing_shapes_and_loss_decreases():
    torch.manual_seed(0)
    dec = MoEDecoder(CFG, SIZES, 16)
    memory, logw = torch.randn(32, 5, 16), torch.zeros(32, 5)
    codes = torch.stack([torch.randint(0, k, (32,)) for k in SIZES], 1)
    opt = torch.optim.Adam(dec.parameters(), 1e-2)
    losses = []
    for _ in range(30):
        logits, aux = dec(memory, logw, codes)
        loss = sum(torch.nn.functional.cross_entropy(lg, codes[:, i]) for i, lg in enumerate(logits)) + 0.01 * aux
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert [lg.shape[1] for lg in logits] == list(SIZES)
    assert losses[-1] < 0.5 * losses[0]
