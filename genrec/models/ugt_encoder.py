"""UGT encoder: HSTU-style pointwise attention over typed tokens, with group layer norm.

Token layout for a history of L events (positions 0..2L+1)::

    [USER] [ITEM_0] [ACTION_0] [ITEM_1] [ACTION_1] ... [ITEM_{L-1}] [ACTION_{L-1}] [CTX]

USER carries the user's segment, ITEM the item (content projection + semantic-ID codes + an
optional ID embedding), ACTION the action type and the device, CTX the request context (device
and hour). The encoder is causal, so every token's per-layer K/V depends only on its prefix and
can be cached; CTX is computed per request and never cached. The output at CTX is the user
embedding (ANN) and the outputs the CTX token can see are the decoder's memory.

Attention (per head): ``a_ij = SiLU(q_i.k_j / sqrt(d_h) + pos_bias + time_bias) * w_ij / sum_j w_ij``
with no softmax. ``w_ij`` is the number of tokens key j stands for (1 for an exact token, C for
a compressed block slot), so the division is the pointwise-attention "1/L" scaling and stays
consistent when old tokens are compressed.

History compression (``EncoderConfig.compression``): a query in block ``b = pos // C`` sees
- exact keys of blocks ``b-Rb .. b`` (``Rb = recent_tokens // C``),
- one mean slot per block in ``b-Rb-M .. b-Rb-1`` (``M = slots``),
- one running-mean summary slot of all older blocks.
This view depends only on positions, so encoding a history in one go (``forward_dense``) and
extending a cached state event by event (``extend``) give the same result, and the state a
returning user needs is bounded by about ``recent_tokens + block_tokens + slots + 1`` keys per
layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genrec.data.schema import N_ACTIONS, History
from genrec.ensemble.encoder_state import ACTION, CONTEXT, ITEM, USER, EncoderState, Geometry, IncrementalEncoder, event_tokens
from genrec.models import members
from genrec.settings import EncoderConfig

N_TOKEN_TYPES = 4


class GroupLayerNorm(nn.Module):
    """Layer norm whose scale and shift are chosen by the token's type group."""

    def __init__(self, d: int, n_groups: int = N_TOKEN_TYPES) -> None:
        super().__init__()
        self.d = d
        self.weight = nn.Parameter(torch.ones(n_groups, d))
        self.bias = nn.Parameter(torch.zeros(n_groups, d))

    def forward(self, x: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.d,)) * self.weight[types] + self.bias[types]


def _pos_bucket(d: torch.Tensor, n: int) -> torch.Tensor:
    d = d.clamp(min=0).floor()
    return torch.where(d < 1, torch.zeros_like(d), torch.log2(d.clamp(min=1)).floor() + 1).clamp(max=n - 1).long()


def _time_bucket(dt_seconds: torch.Tensor, n: int) -> torch.Tensor:
    return torch.log2(1 + dt_seconds.clamp(min=0) / 60.0).floor().clamp(max=n - 1).long()


def _normalise(w: torch.Tensor) -> torch.Tensor:
    """Key weights divided by the number of tokens they stand for: the pointwise 1/L scaling."""
    return w / w.sum(dim=-1, keepdim=True).clamp(min=1.0)


def _head_bias(table: torch.Tensor, bucket: torch.Tensor) -> torch.Tensor:
    """(H, buckets) table indexed by (Nq,Nk) or (B,Nq,Nk) buckets -> broadcastable (B|1, H, Nq, Nk)."""
    b = table[:, bucket]
    return b.unsqueeze(0) if bucket.dim() == 2 else b.transpose(0, 1)


class HSTULayer(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.h, self.dh = cfg.n_heads, d // cfg.n_heads
        self.cfg = cfg
        self.ln_in = GroupLayerNorm(d)
        self.uvqk = nn.Linear(d, 4 * d)
        self.ln_attn = GroupLayerNorm(d)
        self.out = nn.Linear(d, d)
        self.pos_bias = nn.Parameter(torch.zeros(cfg.n_heads, cfg.pos_buckets))
        self.time_bias = nn.Parameter(torch.zeros(cfg.n_heads, cfg.time_buckets))
        self.drop = nn.Dropout(cfg.dropout)

    def project(self, x: torch.Tensor, types: torch.Tensor) -> tuple[torch.Tensor, ...]:
        u, v, q, k = F.silu(self.uvqk(self.ln_in(x, types))).chunk(4, dim=-1)
        return u, v, q, k

    def bias_index(self, dpos: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        """One combined (position, time) bucket per (query, key); computed once per forward."""
        return _pos_bucket(dpos, self.cfg.pos_buckets) * self.cfg.time_buckets + _time_bucket(dt, self.cfg.time_buckets)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, bucket: torch.Tensor) -> torch.Tensor:
        """q (B,Nq,d); k, v (B,Nk,d); w (row-normalised key weights) and bucket broadcastable to
        (B,Nq,Nk). Returns (B,Nq,d)."""
        b, nq, _ = q.shape
        nk = k.shape[1]
        qh = q.view(b, nq, self.h, self.dh).transpose(1, 2)
        kh = k.view(b, nk, self.h, self.dh).transpose(1, 2)
        vh = v.view(b, nk, self.h, self.dh).transpose(1, 2)
        table = (self.pos_bias[:, :, None] + self.time_bias[:, None, :]).reshape(self.h, -1)
        scores = qh @ kh.transpose(-1, -2) / math.sqrt(self.dh) + _head_bias(table, bucket)
        w = w.unsqueeze(1) if w.dim() == 3 else w
        a = F.silu(scores) * w
        return (a @ vh).transpose(1, 2).reshape(b, nq, self.h * self.dh)

    def finish(self, x: torch.Tensor, o: torch.Tensor, u: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.out(self.ln_attn(o, types) * u))


@dataclass
class TokenBatch:
    """Right-padded typed tokens for B histories; ``length[b]`` includes USER and CTX."""

    item: torch.Tensor  # (B,N) long, -1 where not an ITEM token
    action: torch.Tensor  # (B,N) long
    device: torch.Tensor  # (B,N) long
    types: torch.Tensor  # (B,N) long
    time: torch.Tensor  # (B,N) float64 seconds
    segment: torch.Tensor  # (B,) long
    length: torch.Tensor  # (B,) long


def build_tokens(histories: list[History], segments: list[int], ctx_device: list[int], ctx_time: list[int]) -> TokenBatch:
    lengths = [2 * len(h) + 2 for h in histories]
    n, b = max(lengths), len(histories)
    item = np.full((b, n), -1, dtype=np.int64)
    action = np.zeros((b, n), dtype=np.int64)
    device = np.zeros((b, n), dtype=np.int64)
    types = np.zeros((b, n), dtype=np.int64)
    time = np.zeros((b, n), dtype=np.float64)
    for r, h in enumerate(histories):
        ev = event_tokens(h, 1)
        m = 2 * len(h)
        item[r, 1 : m + 1], action[r, 1 : m + 1], device[r, 1 : m + 1], types[r, 1 : m + 1], time[r, 1 : m + 1] = (
            ev["item"],
            ev["action"],
            ev["device"],
            ev["types"],
            ev["time"],
        )
        time[r, 0] = h.timestamp[0] if len(h) else ctx_time[r]
        types[r, 0] = USER
        types[r, m + 1] = CONTEXT
        device[r, m + 1] = ctx_device[r]
        time[r, m + 1] = ctx_time[r]
    t = torch.from_numpy
    return TokenBatch(t(item), t(action), t(device), t(types), t(time), torch.tensor(segments, dtype=torch.long), torch.tensor(lengths))


@dataclass
class EncoderOutput:
    memory: torch.Tensor  # (B, M, d) what the decoder cross-attends to
    memory_logw: torch.Tensor  # (B, M) log of the token count each memory entry stands for; -inf = absent
    user: torch.Tensor  # (B, d) user embedding for ANN, in item-embedding space


class UGTEncoder(nn.Module):
    item_content: torch.Tensor  # buffers, (n_items, content_dim) and (n_items, 3)
    item_codes: torch.Tensor

    def __init__(
        self,
        cfg: EncoderConfig,
        item_content: np.ndarray,
        item_codes: np.ndarray,
        codebook_sizes: tuple[int, int, int],
        n_segments: int,
        n_devices: int,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.n_items = item_content.shape[0]
        self.register_buffer("item_content", torch.from_numpy(item_content).float())
        self.register_buffer("item_codes", torch.from_numpy(item_codes).long())
        self.content_proj = nn.Linear(item_content.shape[1], d)
        self.code_emb = nn.ModuleList([nn.Embedding(k, d) for k in codebook_sizes])
        self.id_emb = nn.Embedding(self.n_items, d) if cfg.use_item_id_embedding else None
        if self.id_emb is not None:
            nn.init.normal_(self.id_emb.weight, std=0.02)
        self.segment_emb = nn.Embedding(max(1, n_segments), d)
        self.action_emb = nn.Embedding(N_ACTIONS, d)
        self.device_emb = nn.Embedding(max(1, n_devices), d)
        self.ctx_device_emb = nn.Embedding(max(1, n_devices), d)
        self.hour_emb = nn.Embedding(24, d)
        self.type_emb = nn.Embedding(N_TOKEN_TYPES, d)
        self.layers = nn.ModuleList([HSTULayer(cfg) for _ in range(cfg.n_layers)])
        self.ln_out = GroupLayerNorm(d)
        self.user_proj = nn.Linear(d, d)

    @property
    def encoder_layers(self) -> list[HSTULayer]:
        return members(self.layers, HSTULayer)

    # ---- embeddings -------------------------------------------------------------------------
    def item_embeddings(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """Item vectors (published to the ANN index and used as input and output embeddings)."""
        idx = torch.arange(self.n_items) if items is None else items
        x = self.content_proj(self.item_content[idx])
        for level, emb in enumerate(self.code_emb):
            x = x + emb(self.item_codes[idx, level])
        if self.id_emb is not None:
            x = x + self.id_emb(idx)
        return x

    def _embed(self, item, action, device, types, time, segment) -> torch.Tensor:
        """All token kinds embedded, then picked by type. Shapes (B,N) (segment (B,))."""
        x_item = self.item_embeddings(item.clamp(min=0))
        x_action = self.action_emb(action) + self.device_emb(device)
        # (time % 86400) // 3600 in an export-friendly form; clamped so no input can index out of range
        hour = (torch.floor(time / 3600) - 24 * torch.floor(time / 86400)).long().clamp(0, 23)
        x_ctx = self.ctx_device_emb(device) + self.hour_emb(hour)
        x_user = self.segment_emb(segment).unsqueeze(1).expand_as(x_item)
        t = types.unsqueeze(-1)
        x = torch.where(t == ITEM, x_item, torch.where(t == ACTION, x_action, torch.where(t == CONTEXT, x_ctx, x_user)))
        return x + self.type_emb(types)

    # ---- compression geometry ---------------------------------------------------------------
    @property
    def _geometry(self) -> tuple[int, int, int]:
        c = self.cfg.block_tokens
        return c, max(0, self.cfg.recent_tokens // c), self.cfg.slots

    def _dense_weights(self, n: int, compression: bool) -> tuple[torch.Tensor, int]:
        """Key weights (Np, Np + 2*nB) for queries at positions 0..Np-1 (Np = n padded to blocks)."""
        c, rb, m = self._geometry
        if not compression:
            return torch.ones(n, n).tril(), 0
        nb = -(-n // c)
        np_ = nb * c
        pos = torch.arange(np_)
        blk = pos // c
        exact = (pos[None, :] <= pos[:, None]) & (blk[None, :] >= blk[:, None] - rb)
        chunks = torch.arange(nb)
        slot = ((chunks[None, :] >= blk[:, None] - rb - m) & (chunks[None, :] < blk[:, None] - rb)).float() * c
        n_sum = (blk - rb - m).clamp(min=0)
        summary = (chunks[None, :] == blk[:, None]).float() * (n_sum[:, None] * c)
        return torch.cat([exact.float(), slot, summary], dim=1), nb

    @staticmethod
    def _block_means(x: torch.Tensor, nb: int, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, nb*c, ...) -> block means (B, nb, ...) and the running-summary per query block."""
        means = x.reshape(x.shape[0], nb, c, *x.shape[2:]).mean(dim=2)
        return means, torch.cumsum(means, dim=1)

    def _summary(self, cums: torch.Tensor, nb: int) -> torch.Tensor:
        """Mean of blocks ``[0, b-Rb-M)`` for each query block b (zeros where there are none)."""
        _, rb, m = self._geometry
        count = (torch.arange(nb) - rb - m).clamp(min=0)
        idx = (count - 1).clamp(min=0)
        shape = [1, nb] + [1] * (cums.dim() - 2)
        picked = cums[:, idx] / count.clamp(min=1).view(shape).to(cums.dtype)
        return torch.where((count > 0).view(shape), picked, torch.zeros_like(picked))

    def _augment(self, x: torch.Tensor, nb: int) -> torch.Tensor:
        c = self.cfg.block_tokens
        means, cums = self._block_means(x, nb, c)
        return torch.cat([x, means, self._summary(cums, nb)], dim=1)

    # ---- whole-history encoding (training, evaluation, cold users) --------------------------
    def forward_dense(self, tokens: TokenBatch, compression: bool | None = None) -> EncoderOutput:
        compression = self.cfg.compression if compression is None else compression
        b, n = tokens.item.shape
        w, nb = self._dense_weights(n, compression)
        np_ = w.shape[0]
        pad = np_ - n
        item, action, device, types = (F.pad(t, (0, pad)) for t in (tokens.item, tokens.action, tokens.device, tokens.types))
        time = F.pad(tokens.time, (0, pad))
        x = self._embed(item, action, device, types, time, tokens.segment)
        pos = torch.arange(np_, dtype=torch.float64)
        if compression:
            key_pos = self._augment(pos.unsqueeze(0), nb)[0]
            key_time = self._augment(time, nb)
        else:
            key_pos, key_time = pos, time
        dpos = (pos[:, None] - key_pos[None, :]).float()
        dt = (time[:, :, None] - key_time[:, None, :]).float()
        bucket = self.encoder_layers[0].bias_index(dpos.expand_as(dt), dt)
        wn = _normalise(w)
        for layer in self.encoder_layers:
            u, v, q, k = layer.project(x, types)
            if compression:
                k, v = self._augment(k, nb), self._augment(v, nb)
            x = layer.finish(x, layer.attend(q, k, v, wn, bucket), u, types)
        out = self.ln_out(x, types)
        ctx = tokens.length - 1
        user = self.user_proj(out[torch.arange(b), ctx])
        memory = self._augment(out, nb) if compression else out
        mw = w[ctx]  # (B, Nk): the keys the CTX token sees
        return EncoderOutput(memory, torch.where(mw > 0, mw.log(), torch.full_like(mw, -math.inf)), user)

    # ---- incremental encoding with a cached state -------------------------------------------
    def block_forward(
        self,
        item: torch.Tensor,
        action: torch.Tensor,
        device: torch.Tensor,
        types: torch.Tensor,
        time: torch.Tensor,
        pos: torch.Tensor,
        segment: torch.Tensor,
        ctx_k: torch.Tensor,
        ctx_v: torch.Tensor,
        ctx_w: torch.Tensor,
        ctx_pos: torch.Tensor,
        ctx_time: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """G new tokens of one block against explicit cached context keys (the exported graph).

        Token inputs are (G,) (time float64, pos int64), segment (1,); ctx_k/ctx_v (L, Nc, d),
        ctx_pos/ctx_time (Nc,), ctx_w (G, Nc): each new token's weight of each cached key (0 = not
        in its view), so one call can carry several blocks with different views. Returns the new tokens' K and V (L, G, d) to append to the
        state, their outputs (G, d) and user vectors (G, d).
        """
        x = self._embed(item[None], action[None], device[None], types[None], time[None], segment)
        g = item.shape[0]
        types2 = types[None]
        posf = pos.double()
        w = _normalise(torch.cat([ctx_w, torch.ones(g, g).tril()], dim=1))[None]
        dpos = (posf[:, None] - torch.cat([ctx_pos, posf])[None, :]).float()
        dt = (time[:, None] - torch.cat([ctx_time, time])[None, :]).float()
        bucket = self.encoder_layers[0].bias_index(dpos, dt)
        ks, vs = [], []
        for li, layer in enumerate(self.encoder_layers):
            u, v, q, k = layer.project(x, types2)
            keys = torch.cat([ctx_k[li], k[0]])[None]
            vals = torch.cat([ctx_v[li], v[0]])[None]
            x = layer.finish(x, layer.attend(q, keys, vals, w, bucket), u, types2)
            ks.append(k[0])
            vs.append(v[0])
        out = self.ln_out(x, types2)[0]
        return torch.stack(ks), torch.stack(vs), out, self.user_proj(out)

    @torch.no_grad()
    def _block_numpy(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}
        names = ("item", "action", "device", "types", "time", "pos", "segment", "ctx_k", "ctx_v", "ctx_w", "ctx_pos", "ctx_time")
        new_k, new_v, out, user = self.block_forward(*(t[n] for n in names))
        return new_k.numpy(), new_v.numpy(), out.numpy(), user.numpy()

    def incremental(self, compression: bool | None = None) -> IncrementalEncoder:
        """The shared state logic (``genrec.ensemble.encoder_state``) driving this model's block graph."""
        return IncrementalEncoder(self._block_numpy, Geometry.of(self.cfg, compression))

    def init_state(self) -> EncoderState:
        return self.incremental().init_state()

    def extend(self, s: EncoderState, new_events: History, segment: int, compression: bool | None = None) -> EncoderState:
        """Append events to a user's state in place. Work is O(k) blocks for k new events."""
        return self.incremental(compression).extend(s, new_events, segment)

    def query(self, s: EncoderState, ctx_device: int, ctx_time: int, segment: int, compression: bool | None = None) -> EncoderOutput:
        """Run the request's CTX token against a cached state: the decoder memory and user vector."""
        r = self.incremental(compression).query(s, ctx_device, ctx_time, segment)
        return EncoderOutput(torch.from_numpy(r.memory)[None], torch.from_numpy(r.memory_logw)[None], torch.from_numpy(r.user)[None])
