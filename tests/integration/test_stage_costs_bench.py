"""bench.stage_costs' code path on `tiny` in a few seconds, so it cannot rot: every stage is
measured (a few repeats), FLOPs are counted as genrec.model_card counts them, and the glue comes
from a real Triton. Not performance claims: only shape and sense are checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import stage_costs
from genrec.model_card import decoder_flops, encoder_flops

pytestmark = pytest.mark.integration


def test_flops_from_shapes_match_the_model_card(tiny_cfg):
    for events in (16, 256):
        assert stage_costs.encoder_token_flops(tiny_cfg, 0, 2 * events + 2) == encoder_flops(tiny_cfg, events, tiny_cfg.encoder.compression)
    card = decoder_flops(tiny_cfg, 40)
    widths = (1, *tiny_cfg.pipeline.beam_widths[:2])
    for step, w in enumerate(widths):
        k = tiny_cfg.semantic_id.codebook_sizes[step]
        assert stage_costs.decoder_step_flops(tiny_cfg, step, w, 40, k) == card[f"step{step}_beams{w}"]
    assert stage_costs.cross_kv_flops(tiny_cfg, 40) == card["cross_kv_once"]


def test_stage_costs_on_tiny(tiny_run: Path, tiny_repository: Path, tiny_triton, tmp_path: Path):
    out = tmp_path / "stage_costs.json"
    code = stage_costs.main(
        [
            *("--run", str(tiny_run), "--repository", str(tiny_repository)),
            *("--triton-grpc", tiny_triton.grpc_url, "--metrics-url", tiny_triton.metrics_url),
            *("--lengths", "6", "40", "--milvus-k", "10", "100", "--ranker-batches", "10", "100"),
            *("--users", "8", "--repeats", "4", "--cold-repeats", "2", "--floor-size", "128", "--out", str(out)),
        ]
    )
    r = json.loads(out.read_text())
    assert code == 0 and out.with_suffix(".png").stat().st_size > 0
    assert {"machine", "versions", "load_average", "run", "config", "stages", "matmul_floor", "glue"} <= r.keys()
    names = {(s["name"], s["variant"].split(",")[0]) for s in r["stages"]}
    for want in [("encoder", "cold"), ("encoder", "returning"), ("decoder_cross_kv", "once per request"), ("milvus-lite search", "k=100")]:
        assert want in names, want
    assert {s["variant"].split(",")[0] for s in r["stages"] if s["name"] == "decoder_step"} == {"level 1", "level 2", "level 3"}
    for s in r["stages"]:
        assert {"p50_ms", "p90_ms", "mean_ms", "flops", "gflops_s", "fraction_of_floor"} <= s.keys()
        if s["name"] != "glue":
            assert 0 < s["p50_ms"] <= s["p90_ms"], s
        if s["fraction_of_floor"] is not None:
            assert s["flops"] > 0 and 0 < s["fraction_of_floor"] < 1.5, s
    assert r["floor_gflops_s"] > 0 and any(e["what"].startswith("empty graph call") for e in r["matmul_floor"])
    assert r["glue"]["client"]["n"] == 8 and r["glue"]["triton_timers"]["requests"] >= 8  # Triton's own timers, same requests
    assert [p["stage"] for p in r["request_breakdown_mean_ms"]][-1] == "Triton + gRPC glue"
