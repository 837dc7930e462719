import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genrec.models.rqvae import disambiguate, kmeans, spread_last_level, train_rqvae
from genrec.settings import SemanticIdConfig


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=200))
def test_disambiguation_makes_every_id_unique(rows):
    codes = np.array(rows, dtype=np.int64)
    d = disambiguate(codes)
    full = np.column_stack([codes, d])
    assert np.unique(full, axis=0).shape[0] == len(codes)
    # the index counts up from 0 within each group
    for key in {tuple(r) for r in rows}:
        members = np.all(codes == key, axis=1)
        assert sorted(d[members].tolist()) == list(range(members.sum()))


@settings(deadline=None, max_examples=30)
@given(st.integers(2, 40), st.integers(0, 10_000))
def test_spreading_keeps_prefixes_and_only_reduces_collisions(n, seed):
    rng = np.random.default_rng(seed)
    codes = np.column_stack([rng.integers(0, 2, n), rng.integers(0, 2, n), rng.integers(0, 3, n)])
    res, book = rng.normal(size=(n, 4)), rng.normal(size=(8, 4))
    out = spread_last_level(codes, res, book)
    assert np.array_equal(out[:, :2], codes[:, :2])
    assert np.unique(out, axis=0).shape[0] >= np.unique(codes, axis=0).shape[0]
    # a prefix group no larger than the codebook ends with no collision
    for p in {tuple(r) for r in codes[:, :2]}:
        m = np.all(out[:, :2] == p, axis=1)
        if m.sum() <= book.shape[0]:
            assert np.unique(out[m, 2]).size == m.sum()


def test_kmeans_finds_separated_clusters():
    torch.manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(50, 2) for c in centers])
    found = kmeans(x, 3, seed=1)
    assert torch.cdist(centers, found).min(dim=1).values.max() < 0.5


def test_rqvae_trains_codes_in_range_with_high_usage():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(8, 16))[rng.integers(0, 8, 600)] + 0.3 * rng.normal(size=(600, 16))).astype(np.float32)
    cfg = SemanticIdConfig(codebook_sizes=(8, 8, 8), latent_dim=8, hidden_dim=32, epochs=20, batch_size=256)
    _, sem = train_rqvae(x, cfg, 0, lambda m: None)
    assert sem.codes.shape == (600, 3)
    assert sem.codes.min() >= 0 and sem.codes.max() < 8
    rep = sem.report()
    assert rep["unique_ids"] == 600
    assert rep["usage_level1"] >= 0.75  # k-means init + dead-code resets keep codes alive
    assert rep["collision_rate"] <= rep["collision_rate_raw"]
