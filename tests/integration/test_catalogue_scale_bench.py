"""The code path of bench/catalogue_scale.py on the `tiny` run and its shared Triton, a few
seconds, so it cannot rot: semantic IDs timed, the trie measured, FLAT against IVF_FLAT in
milvus-lite (HNSW refused and recorded), recommend at concurrency 1 and 4, the stubs' memory.
Not performance claims: a run this short is only checked for shape and sense."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import catalogue_scale

pytestmark = pytest.mark.integration


def test_catalogue_scale_on_tiny(tiny_run: Path, tiny_repository: Path, tiny_triton, tmp_path: Path):
    out = tmp_path / "catalogue_scale.json"
    assert tiny_triton.proc is not None
    code = catalogue_scale.main(
        [
            *("--run", str(tiny_run), "--repository", str(tiny_repository), "--triton-grpc", tiny_triton.grpc_url),
            *("--triton-pid", str(tiny_triton.proc.pid), "--metrics-url", tiny_triton.metrics_url, "--lock", ""),
            *("--requests", "12", "--queries", "8", "--nprobe", "4", "--rqvae-epochs", "1", "--out", str(out)),
        ]
    )
    r = json.loads(out.read_text())
    assert code == 0 and {"machine", "versions", "load_average", "rows"} <= r.keys()
    (row,) = r["rows"]
    assert row["items"] == 2000 and row["semantic_id_build_s"] > 0 and row["trie_entries"] > 2000 and row["trie_bytes"] > 0
    ann = {a["index"]: a for a in row["ann"]}
    assert ann["FLAT"]["recall_at_500"] == 1.0 and 0 <= ann["IVF_FLAT"]["recall_at_500"] <= 1
    assert "error" in ann["HNSW"]  # milvus-lite: FLAT, IVF_FLAT, AUTOINDEX only
    assert row["ann_recall_at_500"] >= 0.95 and set(row["ann_search_ms"]) >= {"FLAT", "IVF_FLAT"}
    assert 0 < row["p50_ms"] <= row["p99_ms"] and 0 < row["p50_ms_c4"] <= row["p99_ms_c4"]
    assert row["rss_mb"] > 0 and row["recommend_instances"] >= 1 and row["triton_total_rss_mb"] >= row["rss_mb"]
    assert out.with_suffix(".png").stat().st_size > 0
