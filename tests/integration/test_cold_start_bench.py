"""bench.cold_start's code path on the published tiny graphs, in a few seconds: both encoder paths
(one block per call, several) serve a cold user the same items with fewer graph calls."""

from __future__ import annotations

import pytest

from bench.cold_start import AFTER, BEFORE, pipelines, plot, print_table
from bench.cold_start import measure_config as measure
from genrec.ensemble.encoder_cache import EncoderCache
from genrec.exporters.publish import version_numbers

pytestmark = pytest.mark.integration


def test_cold_start_bench_runs_both_paths_on_tiny(tiny_repository, tmp_path):
    version = tiny_repository / "recommend" / str(version_numbers(tiny_repository / "recommend")[-1])
    cfg, pipes, counters = pipelines(version, EncoderCache(2**26))
    rows = measure(cfg, pipes, counters, [3, 60], repeats=1, seed=0)
    print_table(rows)
    plot(tmp_path / "cold_start.png", rows)
    assert (tmp_path / "cold_start.png").stat().st_size > 0
    for r in rows:
        assert r["same_items"] and r["max_user_vector_diff"] <= 1e-4
    long = rows[-1]
    span = pipes[AFTER].encoder.span
    query = 1  # the request's CTX token: one more call on either path
    assert long[AFTER]["encoder_graph_calls"] - query == -(-(long[BEFORE]["encoder_graph_calls"] - query) // span)
    assert long[AFTER]["returning_request"] is not None and rows[0][AFTER]["returning_request"] is None  # 3 events: no prefix of L-4
