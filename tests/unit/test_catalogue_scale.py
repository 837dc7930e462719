"""The pieces of the 1M-item work: the ANN index settings, recall@k, the batched Milvus insert,
the sparse trie exclusions and the benchmark's own choices (bench/catalogue_scale.py)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.catalogue_scale import codebooks_for, pick_index, serving_env, trie_size
from genrec.ensemble.milvus_index import IndexSpec, default_nlist, insert_rows, recall_at_k
from genrec.ensemble.prefix_trie import ExcludedCounts, PrefixTrie
from genrec.settings import AnnIndexType, ServingConfig, named_config


def test_recall_at_k_counts_the_exact_ids_found():
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert recall_at_k(exact, exact) == 1.0
    assert recall_at_k(np.array([[4, 3, 9, -1], [0, 0, 0, 0]]), exact) == pytest.approx((2 / 4 + 0) / 2)
    with pytest.raises(ValueError, match="rows"):
        recall_at_k(exact[:1], exact)


def test_the_index_setting_comes_from_the_environment_and_is_checked():
    cfg = named_config("tiny", environ={"GENREC_SERVING__ANN_INDEX": "IVF_FLAT", "GENREC_SERVING__ANN_NPROBE": "8"})
    spec = IndexSpec.of(cfg.serving)
    assert spec.kind is AnnIndexType.IVF_FLAT and not spec.exact
    assert spec.build_params(1_000_000) == {"nlist": default_nlist(1_000_000)} and spec.search_params(500) == {"nprobe": 8}
    assert named_config("tiny", environ={}).serving.ann_index is AnnIndexType.FLAT  # the default stays exact
    with pytest.raises(ValueError, match="'FLAT', 'IVF_FLAT', 'HNSW'"):
        ServingConfig(ann_index="IVF_PQ")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ann_nprobe"):
        ServingConfig(ann_nprobe=0)


def test_the_fingerprint_of_an_index_changes_with_what_changes_its_answers():
    flat, ivf = IndexSpec(), IndexSpec(AnnIndexType.IVF_FLAT, nlist=64, nprobe=8)
    names = {flat.describe(10_000), ivf.describe(10_000), IndexSpec(AnnIndexType.IVF_FLAT, nlist=64, nprobe=16).describe(10_000)}
    assert len(names) == 3 and flat.describe(10_000) == "FLAT" and flat.search_params(500) == {}
    hnsw = IndexSpec(AnnIndexType.HNSW, hnsw_ef=100)
    assert hnsw.search_params(500) == {"ef": 500} and IndexSpec(AnnIndexType.HNSW).search_params(50) == {"ef": 100}  # never under k
    assert default_nlist(10) == 10 and default_nlist(20_000) == 565 and default_nlist(1_000_000) == 4_000


def test_rows_are_inserted_once_each_in_batches_and_a_failure_is_raised():
    seen: list[int] = []
    vectors = np.arange(25 * 2, dtype=np.float32).reshape(25, 2)
    insert_rows(lambda rows: seen.extend(r["id"] for r in rows), vectors, batch=4, in_flight=2)
    assert sorted(seen) == list(range(25))

    def fail(rows):
        if rows[0]["id"] == 8:
            raise RuntimeError("server gone")

    with pytest.raises(RuntimeError, match="server gone"):
        insert_rows(fail, vectors, batch=4)


def test_sparse_exclusions_equal_the_dense_counts():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 6, size=(300, 3))
    trie = PrefixTrie.build(codes, (6, 6, 6))
    ex = rng.choice(300, size=40, replace=False)
    for level, counts in enumerate(trie.counts_without(ex)):
        dense = trie.item_count[level].copy()
        np.subtract.at(dense, trie.item_path[ex, level], 1)
        assert isinstance(counts, ExcludedCounts) and np.array_equal(counts.dense(), dense)
        assert np.array_equal(counts.at(np.arange(dense.size)), dense)
    assert trie.counts_without(None) is trie.item_count  # nothing excluded: the shared counts
    entries, nbytes = trie_size(trie)
    assert entries == sum(c.size for c in trie.child_code) + 300 and nbytes > 0


def test_the_benchmark_serves_the_fastest_index_at_the_recall_goal():
    rows = [
        {"index": "FLAT", "describe": "FLAT", "search_p50_ms": 30.0, "recall_at_500": 1.0},
        {
            "index": "IVF_FLAT",
            "describe": "IVF_FLAT(nlist=4000,nprobe=8)",
            "nlist": 4000,
            "nprobe": 8,
            "search_p50_ms": 5.0,
            "recall_at_500": 0.90,
        },
        {
            "index": "IVF_FLAT",
            "describe": "IVF_FLAT(nlist=4000,nprobe=64)",
            "nlist": 4000,
            "nprobe": 64,
            "search_p50_ms": 9.0,
            "recall_at_500": 0.97,
        },
        {"index": "HNSW", "error": "refused"},
    ]
    best = pick_index(rows, 0.95)
    assert best["nprobe"] == 64
    assert serving_env(best) == {
        "GENREC_SERVING__ANN_INDEX": "IVF_FLAT",
        "GENREC_SERVING__ANN_NLIST": "4000",
        "GENREC_SERVING__ANN_NPROBE": "64",
    }
    assert pick_index(rows, 0.99)["index"] == "FLAT"
    assert codebooks_for(20_000) == (32, 32, 32) and codebooks_for(200_000) == (64, 64, 64) and codebooks_for(1_000_000) == (128, 128, 128)


def test_an_hnsw_index_on_a_milvus_server_is_served_at_the_breadth_it_was_measured_at():
    rows = [
        {"index": "FLAT", "describe": "FLAT", "search_p50_ms": 32.0, "recall_at_500": 1.0},
        {"index": "HNSW", "describe": "HNSW(M=16,efConstruction=200,ef=500)", "ef": 500, "search_p50_ms": 3.0, "recall_at_500": 0.93},
        {"index": "HNSW", "describe": "HNSW(M=16,efConstruction=200,ef=1000)", "ef": 1000, "search_p50_ms": 5.0, "recall_at_500": 0.98},
    ]
    best = pick_index(rows, 0.95)
    assert serving_env(best, "http://127.0.0.1:19530") == {
        "GENREC_SERVING__ANN_INDEX": "HNSW",
        "GENREC_SERVING__ANN_HNSW_EF": "1000",
        "GENREC_SERVING__MILVUS_URI": "http://127.0.0.1:19530",
    }
