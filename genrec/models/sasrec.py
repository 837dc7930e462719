"""SASRec-style next-item baseline: causal softmax self-attention over item-ID embeddings.

It is what a recommender team would pick without generative retrieval. Trained on the same
training events as the generative model, with a full softmax over the catalogue at every
position, and scored by the dot product of the last position with every item.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SASRec(nn.Module):
    def __init__(self, n_items: int, d: int, n_layers: int, n_heads: int, max_len: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.n_items, self.max_len = n_items, max_len
        self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=n_items)  # last row = padding
        nn.init.normal_(self.item_emb.weight, std=0.02)
        self.pos_emb = nn.Embedding(max_len, d)
        layer = nn.TransformerEncoderLayer(d, n_heads, 2 * d, dropout, batch_first=True, norm_first=True, activation="gelu")
        self.blocks = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.ln = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """seq (B, T) left-padded with n_items -> hidden states (B, T, d)."""
        t = seq.shape[1]
        x = self.item_emb(seq) * math.sqrt(self.item_emb.embedding_dim) + self.pos_emb(torch.arange(t))
        # causal, never attending to padding; a padding query sees itself so no row is all -inf
        pad = seq == self.n_items
        eye = torch.eye(t, dtype=torch.bool)
        allowed = torch.ones(t, t, dtype=torch.bool).tril() & (~pad[:, None, :] | eye)
        mask = torch.zeros(allowed.shape).masked_fill(~allowed, -math.inf)
        mask = mask.repeat_interleave(self.blocks.layers[0].self_attn.num_heads, dim=0)
        return self.ln(self.blocks(self.drop(x), mask=mask))

    def loss(self, seq: torch.Tensor, target: torch.Tensor, negatives: int = 4096) -> torch.Tensor:
        """Softmax over the target and ``negatives`` uniformly drawn items shared by the batch.

        (The original SASRec used one negative per position; a full softmax at every position
        costs ~1 GB of logits per batch at 20k items on CPU.)
        """
        h = self.forward(seq)
        valid = target != self.n_items
        h, t = h[valid], target[valid]
        if negatives >= self.n_items:
            return F.cross_entropy(h @ self.item_emb.weight[: self.n_items].T, t)
        neg = torch.randint(0, self.n_items, (negatives,))
        pos_logit = (h * self.item_emb(t)).sum(-1, keepdim=True)
        neg_logit = h @ self.item_emb(neg).T
        neg_logit = neg_logit.masked_fill(neg[None, :] == t[:, None], -math.inf)  # a sampled target is not a negative
        return F.cross_entropy(torch.cat([pos_logit, neg_logit], dim=1), torch.zeros_like(t))

    @torch.no_grad()
    def scores(self, seq: torch.Tensor) -> torch.Tensor:
        """Scores (B, n_items) for the item after each left-padded sequence."""
        return self.forward(seq)[:, -1] @ self.item_emb.weight[: self.n_items].T


def left_pad(seqs: list, n_items: int, max_len: int) -> torch.Tensor:
    out = torch.full((len(seqs), max_len), n_items, dtype=torch.long)
    for i, s in enumerate(seqs):
        s = s[-max_len:]
        if len(s):
            out[i, max_len - len(s) :] = torch.as_tensor(s, dtype=torch.long)
    return out
