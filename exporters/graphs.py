"""Flat-tensor wrappers of the PyTorch models: exactly the graphs that are exported to ONNX.

Each forward's argument order is the contract's input order (``genrec.contracts``).
"""

from __future__ import annotations

import torch
from torch import nn

from genrec.models import members
from genrec.models.moe_decoder import N_LEVELS, MoEDecoder
from genrec.models.target_prerank import TargetPrerank
from genrec.models.ugt_encoder import UGTEncoder

PAD_LOGIT = -1e9  # logits of codes past a level's codebook size


class EncoderBlockGraph(nn.Module):
    def __init__(self, enc: UGTEncoder) -> None:
        super().__init__()
        self.enc = enc

    def forward(self, item, action, device, types, time, pos, segment, ctx_k, ctx_v, ctx_w, ctx_pos, ctx_time):
        return self.enc.block_forward(item, action, device, types, time, pos, segment, ctx_k, ctx_v, ctx_w, ctx_pos, ctx_time)


class DecoderCrossKVGraph(nn.Module):
    def __init__(self, dec: MoEDecoder) -> None:
        super().__init__()
        self.dec = dec

    def forward(self, memory):
        mem = self.dec.memory_proj(memory)
        ks, vs = zip(*(layer.memory_kv(mem) for layer in self.dec.layers))
        return torch.stack(ks), torch.stack(vs)


class DecoderStepGraph(nn.Module):
    """One decoder step: reorder the past by ``parents``, feed ``codes``, return logits and K/V."""

    def __init__(self, dec: MoEDecoder) -> None:
        super().__init__()
        self.dec = dec
        d = dec.cfg.d_model
        sizes = dec.codebook_sizes
        kmax = max(sizes)
        # Step s reads token table rows offset[s] + code (row 0 is BOS) and predicts with head s.
        table = torch.cat([dec.bos.detach()[None], *(e.weight.detach() for e in members(dec.code_emb, nn.Embedding))])
        self.register_buffer("token_table", table)
        self.register_buffer("token_offset", torch.tensor([0, 1, 1 + sizes[0]]))
        w = torch.zeros(N_LEVELS, kmax, d)
        b = torch.full((N_LEVELS, kmax), PAD_LOGIT)
        for s, head in enumerate(members(dec.heads, nn.Linear)):
            w[s, : sizes[s]] = head.weight.detach()
            b[s, : sizes[s]] = head.bias.detach()
        self.register_buffer("head_w", w)
        self.register_buffer("head_b", b)

    def forward(self, step, codes, parents, past_k, past_v, cross_k, cross_v, cross_bias):
        dec = self.dec
        s = step[0]
        codes = torch.where(s > 0, codes, torch.zeros_like(codes))
        x = self.token_table[self.token_offset[s] + codes] + dec.step_emb.weight[s]  # (R, W, d)
        idx = parents[None, :, :, None, None, None].expand(past_k.shape[0], -1, -1, *past_k.shape[3:])
        past_k = torch.gather(past_k, 2, idx)
        past_v = torch.gather(past_v, 2, idx)
        x, present_k, present_v = dec.step_layers(x, past_k, past_v, cross_k, cross_v, cross_bias)
        h = dec.ln_out(x)
        logits = h @ self.head_w[s].T + self.head_b[s]
        return logits, torch.stack(present_k), torch.stack(present_v)


class TargetPrerankGraph(nn.Module):
    """One request's microbatch of candidates against its encoder memory (the module's batch of one)."""

    def __init__(self, model: TargetPrerank) -> None:
        super().__init__()
        self.model = model

    def forward(self, memory, memory_logw, item_vectors, features):
        return self.model(memory[None], memory_logw[None], item_vectors[None], features[None])[0]
