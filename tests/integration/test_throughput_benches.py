"""The code paths of bench/open_loop.py and bench/throughput_vs_eager.py on `tiny`, a few seconds
each, so they cannot rot. Not performance claims: the figures of a run this short on a shared
machine are only checked for shape and sense."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import open_loop, throughput_vs_eager

pytestmark = pytest.mark.integration


def _sane(row: dict) -> None:
    lat = row["latency_ms"]
    assert row["ok"] > 0 and row["errors"] == 0, row
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"]
    assert row["service_latency_ms"]["p50"] <= lat["p50"]  # from the send, never longer than from the due time
    assert row["achieved_rps"] > 0 and row["generator_cpu_cores"] >= 0


def test_open_loop_sweep_of_recommend_and_the_feed(tiny_run: Path, tiny_triton, tiny_feed, tmp_path: Path):
    out = tmp_path / "open_loop.json"
    code = open_loop.main(
        [
            *("--run", str(tiny_run), "--triton-grpc", tiny_triton.grpc_url, "--metrics-url", tiny_triton.metrics_url),
            *("--feed-url", tiny_feed.url, "--rates", "4", "8", "--feed-rates", "3", "--window-s", "1.5", "--users", "60"),
            *("--out", str(out)),
        ]
    )
    r = json.loads(out.read_text())
    assert code == 0 and [row["offered_rps"] for row in r["recommend"]] == [4, 8]
    for row in r["recommend"] + r["feed"]:
        _sane(row)
    assert r["recommend"][0]["triton_ms"]["request_ms"] > 0  # Triton's own timers, scraped around the window
    assert {"machine", "versions", "load_average_before", "recommend_saturation_rps", "feed_saturation_rps"} <= r.keys()
    assert out.with_suffix(".png").stat().st_size > 0


def test_throughput_search_over_ours_no_triton_and_eager(tiny_run: Path, tiny_repository: Path, tiny_triton, tmp_path: Path):
    out = tmp_path / "throughput.json"
    code = throughput_vs_eager.main(
        [
            *("--run", str(tiny_run), "--repository", str(tiny_repository), "--triton-grpc", tiny_triton.grpc_url),
            *("--only", "ours", "no_triton", "eager", "--window-s", "1", "--max-trials", "2", "--users", "40"),
            *("--out", str(out)),
        ]
    )
    r = json.loads(out.read_text())
    assert code == 0
    for name in ("ours", "no_triton", "eager"):
        s = r["setups"][name]
        assert len(s["trials"]) == 2 and s["warmup_median_ms"] > 0
        assert all(t["ok"] > 0 for t in s["trials"])  # each service answered under load
        assert r[f"{name}_rps_at_p99_50ms"] == s["rps_at_p99_50ms"] >= 0
    assert r["ours_2_instances_redis_rps_at_p99_50ms"] is None
    assert {"ratio", "ratio_vs_no_triton", "machine", "versions", "load_average"} <= r.keys()
    assert out.with_suffix(".png").stat().st_size > 0
