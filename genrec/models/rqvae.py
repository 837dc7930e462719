"""RQ-VAE: item embeddings -> 3 residual codes (the semantic ID).

- k-means initialisation of each level's codebook on the residuals of the level above;
- dead codes (unused in the last few epochs) are re-seeded from residuals that are far from
  their code, so codebook usage stays high;
- collisions (two items with the same 3 codes) are resolved by a 4th *disambiguation* index,
  so every item has a unique ``(c1, c2, c3, d)``; generation runs over the 3 levels and a leaf
  stands for its (small) group of items.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from genrec.settings import SemanticIdConfig


def kmeans(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = x[torch.randperm(x.shape[0], generator=g)[:k]].clone()
    if centers.shape[0] < k:  # fewer points than codes: pad with jittered copies
        extra = centers[torch.randint(0, centers.shape[0], (k - centers.shape[0],), generator=g)]
        centers = torch.cat([centers, extra + 1e-3 * torch.randn(extra.shape, generator=g)])
    for _ in range(iters):
        assign = torch.cdist(x, centers).argmin(dim=1)
        sums = torch.zeros_like(centers).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1).to(x.dtype)
        centers = torch.where(counts > 0, sums / counts.clamp(min=1), centers)
    return centers


class RQVAE(nn.Module):
    def __init__(self, in_dim: int, cfg: SemanticIdConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h, z = cfg.hidden_dim, cfg.latent_dim
        self.encoder = nn.Sequential(nn.Linear(in_dim, h), nn.SiLU(), nn.Linear(h, z))
        self.decoder = nn.Sequential(nn.Linear(z, h), nn.SiLU(), nn.Linear(h, in_dim))
        self.codebooks = nn.ParameterList([nn.Parameter(torch.randn(k, z) * 0.1) for k in cfg.codebook_sizes])

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Returns (codes (n, levels), quantised z, residual at each level)."""
        residual = z
        codes, quantised, residuals = [], torch.zeros_like(z), []
        for book in self.codebooks:
            residuals.append(residual)
            c = torch.cdist(residual, book).argmin(dim=1)
            q = book[c]
            codes.append(c)
            quantised = quantised + q
            residual = residual - q
        return torch.stack(codes, dim=1), quantised, residuals

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        residual = z
        loss_q = torch.zeros((), dtype=x.dtype)
        quantised = torch.zeros_like(z)
        codes = []
        for book in self.codebooks:
            c = torch.cdist(residual.detach(), book).argmin(dim=1)
            q = book[c]
            # codebook loss pulls codes to residuals; commitment keeps the encoder near its codes
            loss_q = loss_q + ((residual.detach() - q) ** 2).mean() + self.cfg.commitment * ((residual - q.detach()) ** 2).mean()
            quantised = quantised + q
            residual = residual - q.detach()
            codes.append(c)
        z_q = z + (quantised - z).detach()  # straight-through estimator
        recon = ((self.decoder(z_q) - x) ** 2).mean()
        return recon, loss_q, torch.stack(codes, dim=1)

    @torch.no_grad()
    def init_codebooks(self, x: torch.Tensor, seed: int) -> None:
        residual = self.encoder(x)
        for level, book in enumerate(self.codebooks):
            book.data.copy_(kmeans(residual, book.shape[0], seed=seed + level))
            residual = residual - book[torch.cdist(residual, book).argmin(dim=1)]

    @torch.no_grad()
    def reset_dead_codes(self, x: torch.Tensor, used: list[torch.Tensor], seed: int) -> int:
        """Re-seed codes nobody used from the residuals worst served by their current code."""
        g = torch.Generator().manual_seed(seed)
        _, _, residuals = self.quantize(self.encoder(x))
        n_reset = 0
        for level, book in enumerate(self.codebooks):
            dead = torch.nonzero(used[level] == 0).flatten()
            if dead.numel() == 0:
                continue
            r = residuals[level]
            err = torch.cdist(r, book).min(dim=1).values
            pool = torch.topk(err, min(r.shape[0], 4 * dead.numel())).indices
            pick = pool[torch.randperm(pool.numel(), generator=g)[: dead.numel()]]
            book.data[dead[: pick.numel()]] = r[pick] + 1e-3 * torch.randn(pick.numel(), r.shape[1], generator=g)
            n_reset += int(dead.numel())
        return n_reset


def codebook_triple(sizes: Iterable[int]) -> tuple[int, int, int]:
    """Three codebook sizes as ints (a config or an npz may hold a list or numpy ints)."""
    first, second, third = (int(k) for k in sizes)
    return first, second, third


@dataclass(frozen=True)
class SemanticIds:
    codes: np.ndarray  # (n_items, 3) int64, the generated levels
    disambiguation: np.ndarray  # (n_items,) int64, index within the item's (c1, c2, c3) group
    codebook_sizes: tuple[int, int, int]
    raw_collision_rate: float = float("nan")  # before spreading the last level

    def report(self) -> dict[str, float]:
        usage = {f"usage_level{level + 1}": float(np.unique(self.codes[:, level]).size / k) for level, k in enumerate(self.codebook_sizes)}
        _, inverse, counts = np.unique(self.codes, axis=0, return_inverse=True, return_counts=True)
        group = counts[inverse.reshape(-1)]
        return {
            **usage,
            "collision_rate_raw": self.raw_collision_rate,  # straight from the quantiser
            "collision_rate": float((group > 1).mean()),  # items sharing their 3 codes with another item
            "max_group_size": int(counts.max()),
            "unique_prefixes": int(counts.size),
            "unique_ids": int(np.unique(np.column_stack([self.codes, self.disambiguation]), axis=0).shape[0]),
        }


def spread_last_level(codes: np.ndarray, last_residual: np.ndarray, last_codebook: np.ndarray) -> np.ndarray:
    """Within each (c1, c2) prefix, give items distinct last-level codes where the codebook allows.

    Greedy matching on distance: each item takes its nearest last-level code that no other item of
    its prefix holds yet. Items keep their own code when it is free, so the ID stays semantic;
    only items that would collide move, to their next-nearest free code. Groups larger than the
    codebook still collide and fall back to the disambiguation index.
    """
    out = codes.copy()
    prefix = codes[:, 0] * (codes[:, 1].max() + 1) + codes[:, 1]
    order = np.argsort(prefix, kind="stable")
    bounds = np.flatnonzero(np.r_[True, prefix[order][1:] != prefix[order][:-1], True])
    k = last_codebook.shape[0]
    for a, b in zip(bounds[:-1], bounds[1:]):
        members = order[a:b]
        if members.size < 2 or np.unique(codes[members, 2]).size == members.size:
            continue
        d = ((last_residual[members, None, :] - last_codebook[None, :, :]) ** 2).sum(-1)  # (g, K)
        taken = np.zeros(k, dtype=bool)
        done = np.zeros(members.size, dtype=bool)
        for flat in np.argsort(d, axis=None, kind="stable"):
            i, c = divmod(int(flat), k)
            if done[i] or taken[c]:
                continue
            out[members[i], 2] = c
            done[i] = taken[c] = True
            if done.all() or taken.all():
                break
    return out


def disambiguate(codes: np.ndarray) -> np.ndarray:
    """Index of each item within its 3-code group, so ``(codes, d)`` is unique."""
    order = np.lexsort(codes.T[::-1])
    sorted_codes = codes[order]
    new_group = np.ones(len(codes), dtype=bool)
    new_group[1:] = np.any(sorted_codes[1:] != sorted_codes[:-1], axis=1)
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(len(codes)), 0))
    d = np.empty(len(codes), dtype=np.int64)
    d[order] = np.arange(len(codes)) - group_start
    return d


def train_rqvae(
    features: np.ndarray, cfg: SemanticIdConfig, seed: int = 0, progress: Callable[[str], None] = print
) -> tuple[RQVAE, SemanticIds]:
    torch.manual_seed(seed)
    x = torch.from_numpy(features)
    model = RQVAE(x.shape[1], cfg)
    model.init_codebooks(x, seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(seed)
    used = [torch.zeros(k) for k in cfg.codebook_sizes]
    for epoch in range(cfg.epochs):
        perm = torch.randperm(x.shape[0], generator=g)
        total = 0.0
        for s in range(0, x.shape[0], cfg.batch_size):
            recon, lq, codes = model(x[perm[s : s + cfg.batch_size]])
            loss = recon + lq
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * codes.shape[0]
            for level in range(codes.shape[1]):
                used[level] += torch.bincount(codes[:, level], minlength=used[level].numel())
        if (epoch + 1) % cfg.dead_code_every == 0 and epoch + 1 < cfg.epochs:
            n_reset = model.reset_dead_codes(x, used, seed + epoch)
            used = [torch.zeros(k) for k in cfg.codebook_sizes]
            if (epoch + 1) % (cfg.dead_code_every * 4) == 0:
                progress(f"  rq-vae epoch {epoch + 1}/{cfg.epochs} loss {total / x.shape[0]:.4f} dead codes reset {n_reset}")
    with torch.no_grad():
        codes, _, residuals = model.quantize(model.encoder(x))
    raw = codes.numpy().astype(np.int64)
    codes_np = spread_last_level(raw, residuals[-1].numpy(), model.codebooks[-1].detach().numpy())
    return model, SemanticIds(codes_np, disambiguate(codes_np), codebook_triple(cfg.codebook_sizes), raw_collision_rate(raw))


def raw_collision_rate(codes: np.ndarray) -> float:
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return float((counts[inverse.reshape(-1)] > 1).mean())
