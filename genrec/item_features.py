"""Item embeddings that feed the RQ-VAE: what an item *is* (content) plus co-occurrence signal.

The content part is built from category, author and text tokens only, so a brand-new item with
no interactions still gets an embedding and therefore a semantic ID. The collaborative part is
a truncated SVD of the item-to-next-item co-occurrence matrix of the training events; items
never seen in training get zeros there.
"""

from __future__ import annotations

import numpy as np
import torch

from genrec.data.schema import Events, ItemMetadata


def content_embeddings(cat: ItemMetadata, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed + 7919)
    cat_vec = rng.normal(size=(cat.n_categories, dim))
    author_vec = rng.normal(size=(cat.n_authors, dim))
    token_vec = rng.normal(size=(cat.n_text_tokens, dim))
    # the mean of the item's token vectors, summed one token slot at a time in the order
    # ``mean(axis=1)`` adds them (same bits): gathering (n, tokens, dim) at once took ~2 GB at 1M items
    tokens = cat.text_tokens
    acc = token_vec[tokens[:, 0]].copy()
    for j in range(1, tokens.shape[1]):
        acc += token_vec[tokens[:, j]]
    x = cat_vec[cat.category] + 0.5 * author_vec[cat.author] + 0.5 * (acc / tokens.shape[1])
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-9
    return x.astype(np.float32)


def collaborative_embeddings(events: Events, n_items: int, dim: int, seed: int = 0) -> np.ndarray:
    if dim <= 0:
        return np.zeros((n_items, 0), dtype=np.float32)
    same_user = events.user[1:] == events.user[:-1]
    a, b = events.item[:-1][same_user].astype(np.int64), events.item[1:][same_user].astype(np.int64)
    idx = torch.from_numpy(np.stack([np.concatenate([a, b]), np.concatenate([b, a])]))
    m = torch.sparse_coo_tensor(idx, torch.ones(idx.shape[1]), (n_items, n_items), check_invariants=False).coalesce()
    vals = torch.log1p(m.values())  # damp the heaviest pairs
    m = torch.sparse_coo_tensor(m.indices(), vals, m.shape, check_invariants=False)
    torch.manual_seed(seed)
    u, s, _ = torch.svd_lowrank(m, q=dim, niter=4)
    x = (u * s.sqrt()).numpy()
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(norm > 0, x / np.maximum(norm, 1e-9), 0.0).astype(np.float32)


def item_feature_matrix(cat: ItemMetadata, train_events: Events, content_dim: int, collab_dim: int, seed: int = 0) -> np.ndarray:
    return np.concatenate(
        [content_embeddings(cat, content_dim, seed), 0.7 * collaborative_embeddings(train_events, cat.n_items, collab_dim, seed)], axis=1
    ).astype(np.float32)
