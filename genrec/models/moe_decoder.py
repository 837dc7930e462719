"""MoE decoder over semantic-ID codes.

Step t (0, 1, 2) reads the token of step t (BOS, c1, c2) and predicts code level t. Each layer:
causal self-attention over the code tokens, cross-attention to the encoder memory (softmax,
with ``log w`` added so a compressed slot counts for the tokens it stands for), and a
mixture-of-experts feed-forward with top-k routing and a Switch-style load-balancing loss.

The step function keeps a KV cache:
- self-attention past K/V per beam, reordered by parent index between steps (not recomputed);
- cross-attention K/V computed once per request from the memory and shared by all of that
  request's beams (no per-beam copy: queries are grouped by request for the matmul).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genrec.models import members
from genrec.settings import DecoderConfig

N_LEVELS = 3


class MoE(nn.Module):
    """Top-k routed experts. Tokens are gathered per expert, so compute is k/E of the dense form."""

    def __init__(self, d: int, cfg: DecoderConfig) -> None:
        super().__init__()
        self.e, self.k = cfg.n_experts, cfg.top_k
        self.gate = nn.Linear(d, cfg.n_experts, bias=False)
        self.w1 = nn.Parameter(torch.randn(cfg.n_experts, d, cfg.expert_hidden) / math.sqrt(d))
        self.b1 = nn.Parameter(torch.zeros(cfg.n_experts, cfg.expert_hidden))
        self.w2 = nn.Parameter(torch.randn(cfg.n_experts, cfg.expert_hidden, d) / math.sqrt(cfg.expert_hidden))
        self.b2 = nn.Parameter(torch.zeros(cfg.n_experts, d))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        probs = F.softmax(self.gate(x), dim=-1)
        top_w, top_i = probs.topk(self.k, dim=-1)
        top_w = top_w / top_w.sum(dim=-1, keepdim=True)
        y = torch.zeros_like(x)
        for e in range(self.e):  # empty selections are fine (zero-row matmuls); no data-dependent branch, so it exports
            rows, slot = torch.nonzero(top_i == e, as_tuple=True)
            h = F.silu(x[rows] @ self.w1[e] + self.b1[e]) @ self.w2[e] + self.b2[e]
            y = y.index_put((rows,), h * top_w[rows, slot].unsqueeze(-1), accumulate=True)
        # Switch-transformer balance loss: E * sum_e (fraction routed to e) * (mean gate prob of e)
        frac = torch.bincount(top_i.flatten(), minlength=self.e).to(x.dtype) / top_i.numel()
        aux = self.e * (frac * probs.mean(dim=0)).sum()
        return y.reshape(shape), aux


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.h, self.dh = cfg.n_heads, d // cfg.n_heads
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.self_out = nn.Linear(d, d)
        self.cross_q = nn.Linear(d, d)
        self.cross_kv = nn.Linear(d, 2 * d)
        self.cross_out = nn.Linear(d, d)
        self.moe = MoE(d, cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:-1], self.h, self.dh).transpose(-2, -3)  # (..., H, T, dh)

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(-2, -3).reshape(*x.shape[:-3], x.shape[-2], self.h * self.dh)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.cross_kv(memory).chunk(2, dim=-1)
        return self.heads(k), self.heads(v)  # (R, H, M, dh)


@dataclass
class StepCache:
    """KV cache of one beam search over R requests with W beams each."""

    self_k: list[torch.Tensor]  # per layer (R, W, H, t, dh)
    self_v: list[torch.Tensor]
    cross_k: list[torch.Tensor]  # per layer (R, H, M, dh): once per request, shared by its beams
    cross_v: list[torch.Tensor]
    cross_bias: torch.Tensor  # (R, M) log token counts; -inf where absent

    def reorder(self, parents: torch.Tensor) -> None:
        """Keep beam ``parents[r, j]`` of request r as new beam j (gather, no recompute)."""
        idx = parents[:, :, None, None, None]
        for lst in (self.self_k, self.self_v):
            for i, t in enumerate(lst):
                lst[i] = torch.gather(t, 1, idx.expand(-1, -1, *t.shape[2:]))


class MoEDecoder(nn.Module):
    def __init__(self, cfg: DecoderConfig, codebook_sizes: tuple[int, int, int], memory_dim: int) -> None:
        super().__init__()
        d = cfg.d_model
        self.cfg = cfg
        self.codebook_sizes = tuple(codebook_sizes)
        self.memory_proj = nn.Linear(memory_dim, d) if memory_dim != d else nn.Identity()
        self.bos = nn.Parameter(torch.randn(d) * 0.02)
        self.code_emb = nn.ModuleList([nn.Embedding(k, d) for k in codebook_sizes[: N_LEVELS - 1]])
        self.step_emb = nn.Embedding(N_LEVELS, d)
        self.layers = nn.ModuleList([DecoderLayer(cfg) for _ in range(cfg.n_layers)])
        self.ln_out = nn.LayerNorm(d)
        self.heads = nn.ModuleList([nn.Linear(d, k) for k in codebook_sizes])

    @property
    def decoder_layers(self) -> list[DecoderLayer]:
        return members(self.layers, DecoderLayer)

    def _token(self, step: int, codes: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor:
        x = self.bos.expand(*shape, -1) if step == 0 else self.code_emb[step - 1](codes)
        return x + self.step_emb.weight[step]

    @staticmethod
    def _cross(layer: DecoderLayer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """q (R, H, Q, dh) against shared k, v (R, H, M, dh), bias (R, M)."""
        a = q @ k.transpose(-1, -2) / math.sqrt(layer.dh) + bias[:, None, None, :]
        return F.softmax(a, dim=-1) @ v

    # ---- training: teacher forcing over the 3 steps ----------------------------------------
    def forward(self, memory: torch.Tensor, memory_logw: torch.Tensor, codes: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """memory (B,M,dm), memory_logw (B,M), codes (B,3) -> logits per level, balance loss."""
        b = codes.shape[0]
        mem = self.memory_proj(memory)
        x = torch.stack([self._token(0, None, (b,)), self._token(1, codes[:, 0], (b,)), self._token(2, codes[:, 1], (b,))], dim=1)
        causal = torch.full((N_LEVELS, N_LEVELS), -math.inf).triu(1)
        aux = torch.zeros(())
        for layer in self.decoder_layers:
            q, k, v = (layer.heads(t) for t in layer.qkv(layer.ln1(x)).chunk(3, dim=-1))
            a = F.softmax(q @ k.transpose(-1, -2) / math.sqrt(layer.dh) + causal, dim=-1) @ v
            x = x + layer.drop(layer.self_out(layer.merge(a)))
            ck, cv = layer.memory_kv(mem)
            x = x + layer.drop(
                layer.cross_out(layer.merge(self._cross(layer, layer.heads(layer.cross_q(layer.ln2(x))), ck, cv, memory_logw)))
            )
            y, l_aux = layer.moe(layer.ln3(x))
            x = x + layer.drop(y)
            aux = aux + l_aux
        h = self.ln_out(x)
        return [self.heads[t](h[:, t]) for t in range(N_LEVELS)], aux / max(1, len(self.layers))

    # ---- inference: one step with a KV cache -----------------------------------------------
    @torch.no_grad()
    def start(self, memory: torch.Tensor, memory_logw: torch.Tensor) -> StepCache:
        """Cross-attention K/V for R requests, computed once. memory (R,M,dm)."""
        mem = self.memory_proj(memory)
        ks, vs = zip(*(layer.memory_kv(mem) for layer in self.decoder_layers))
        empty = [torch.zeros(memory.shape[0], 1, layer.h, 0, layer.dh) for layer in self.decoder_layers]
        return StepCache(list(empty), list(empty), list(ks), list(vs), memory_logw)

    def step_layers(
        self,
        x: torch.Tensor,
        past_k: list[torch.Tensor] | torch.Tensor,
        past_v: list[torch.Tensor] | torch.Tensor,
        cross_k: list[torch.Tensor] | torch.Tensor,
        cross_v: list[torch.Tensor] | torch.Tensor,
        cross_bias: torch.Tensor,
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """The layers of one step for x (R, W, d) given per-layer past (R, W, H, t, dh) and shared
        cross K/V (R, H, M, dh). Returns the hidden state and the per-layer present K/V. Used by
        ``step`` and by the exported step graph, so both compute exactly this."""
        r, w, _ = x.shape
        present_k, present_v = [], []
        for i, layer in enumerate(self.decoder_layers):
            q, k, v = (t.reshape(r, w, layer.h, 1, layer.dh) for t in layer.qkv(layer.ln1(x)).chunk(3, dim=-1))
            kk = torch.cat([past_k[i], k], dim=3)
            vv = torch.cat([past_v[i], v], dim=3)
            present_k.append(kk)
            present_v.append(vv)
            a = F.softmax(q @ kk.transpose(-1, -2) / math.sqrt(layer.dh), dim=-1) @ vv
            x = x + layer.self_out(a.reshape(r, w, -1))
            cq = layer.cross_q(layer.ln2(x)).reshape(r, w, layer.h, layer.dh).transpose(1, 2)  # (R, H, W, dh)
            c = self._cross(layer, cq, cross_k[i], cross_v[i], cross_bias)
            x = x + layer.cross_out(c.transpose(1, 2).reshape(r, w, -1))
            y, _ = layer.moe(layer.ln3(x))
            x = x + y
        return x, present_k, present_v

    @torch.no_grad()
    def step(self, cache: StepCache, step: int, codes: torch.Tensor | None, n_beams: int) -> torch.Tensor:
        """Feed step ``step``'s token for (R, W) beams (``codes`` None at step 0); logits (R, W, K_step).

        The cache must already be reordered to the current beams; it is extended in place.
        """
        r = cache.cross_bias.shape[0]
        x = self._token(step, codes, (r, n_beams))  # (R, W, d)
        past_k = [t.expand(-1, n_beams, -1, -1, -1) if t.shape[1] != n_beams else t for t in cache.self_k]  # step 0: widen
        past_v = [t.expand(-1, n_beams, -1, -1, -1) if t.shape[1] != n_beams else t for t in cache.self_v]
        x, cache.self_k, cache.self_v = self.step_layers(x, past_k, past_v, cache.cross_k, cache.cross_v, cache.cross_bias)
        return self.heads[step](self.ln_out(x))

    @torch.no_grad()
    def step_uncached(self, memory: torch.Tensor, memory_logw: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """The naive baseline: recompute every beam's prefix and its own copy of the cross K/V.

        prefix (R, W, t) codes of levels < t; returns logits (R, W, K_t).
        """
        r, w, t = prefix.shape
        mem = memory.repeat_interleave(w, dim=0)  # one copy per beam
        logw = memory_logw.repeat_interleave(w, dim=0)
        codes = torch.zeros(r * w, N_LEVELS, dtype=torch.long)
        codes[:, :t] = prefix.reshape(r * w, t)
        logits, _ = self.forward(mem, logw, codes)
        return logits[t].view(r, w, -1)
