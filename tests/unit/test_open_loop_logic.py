"""The open-loop generator's pure logic (bench/open_loop.py): the arrival schedule, percentiles,
a window's figures and the rate search, without a server."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.open_loop import (
    MAX_GENERATOR_CPU,
    MAX_LAG_P99_MS,
    Outcome,
    arrival_offsets,
    passes,
    percentile,
    saturation_rps,
    search_rate,
    triton_means,
    window_stats,
)


def test_uniform_schedule_is_evenly_spaced_from_zero():
    t = arrival_offsets(20, 3.0)
    assert len(t) == 60 and t[0] == 0.0
    assert np.allclose(np.diff(t), 0.05)


def test_poisson_schedule_keeps_the_mean_rate_and_is_reproducible():
    t = arrival_offsets(50, 200.0, "poisson", seed=3)
    assert t[0] == 0.0 and np.all(np.diff(t) >= 0) and t[-1] < 200.0
    assert abs(len(t) / 200.0 - 50) < 2.5  # 10k arrivals: the count's sd is 1% of it
    assert np.array_equal(t, arrival_offsets(50, 200.0, "poisson", seed=3))
    assert not np.array_equal(t[:50], arrival_offsets(50, 200.0, "poisson", seed=4)[:50])


def test_schedule_rejects_an_unknown_arrival_process_and_empty_loads():
    with pytest.raises(ValueError, match="arrivals"):
        arrival_offsets(10, 1.0, "bursty")
    assert len(arrival_offsets(0, 5.0)) == 0 and len(arrival_offsets(5, 0.0)) == 0


def test_percentiles_are_nearest_rank_values_that_were_measured():
    a = list(range(1, 101))
    assert percentile(a, 50) == 50 and percentile(a, 90) == 90 and percentile(a, 99) == 99
    assert percentile(a, 99.9) == 100 and percentile(a, 100) == 100 and percentile(a, 0) == 1
    assert percentile([7.5], 99) == 7.5 and math.isnan(percentile([], 50))


@given(st.lists(st.floats(0, 1e4), min_size=1, max_size=300), st.floats(0, 100))
def test_a_percentile_is_one_of_the_samples_and_monotone(xs, q):
    v = percentile(xs, q)
    assert v in xs
    assert percentile(xs, min(100.0, q + 1)) >= v


def _outcomes(n: int, rate: float, service_s: float, lag_s: float = 0.0, error_every: int = 0) -> list[Outcome]:
    out = []
    for i in range(n):
        due = i / rate
        err = "UNAVAILABLE" if error_every and i % error_every == 0 else ""
        out.append(Outcome(due, due + lag_s, due + lag_s + service_s, err))
    return out


def test_window_counts_from_the_due_time_and_drops_the_warmup():
    # 10/s for 3 s; the first second is warm-up; each request waits 4 ms to leave and takes 20 ms
    s = window_stats(_outcomes(30, 10.0, 0.020, lag_s=0.004), 10.0, warmup_s=1.0, cpu_s=0.2, wall_s=3.0)
    assert s["requests"] == 20 and s["ok"] == 20 and s["errors"] == 0
    assert s["latency_ms"]["p50"] == pytest.approx(24.0) and s["service_latency_ms"]["p50"] == pytest.approx(20.0)
    assert s["schedule_lag_ms"]["p99"] == pytest.approx(4.0)
    assert s["achieved_rps"] == pytest.approx(20 / (2.9 + 0.024 - 1.0))
    assert s["generator_cpu_cores"] == pytest.approx(0.2 / 3.0) and s["generator_ok"]
    assert passes(s) and not passes(s, p99_ms=10.0)


def test_errors_are_counted_by_code_and_fail_the_rate():
    s = window_stats(_outcomes(100, 50.0, 0.005, error_every=10), 50.0, warmup_s=0.0, cpu_s=0.0, wall_s=2.0)
    assert s["errors"] == 10 and s["error_codes"] == {"UNAVAILABLE": 10} and s["error_ratio"] == pytest.approx(0.1)
    assert s["ok"] == 90 and not passes(s)


def test_a_late_or_busy_generator_is_flagged():
    late = window_stats(_outcomes(50, 10.0, 0.01, lag_s=(MAX_LAG_P99_MS + 1) / 1e3), 10.0, 0.0, 0.1, 5.0)
    busy = window_stats(_outcomes(50, 10.0, 0.01), 10.0, 0.0, cpu_s=(MAX_GENERATOR_CPU + 0.1) * 5.0, wall_s=5.0)
    assert not late["generator_ok"] and not busy["generator_ok"]


def test_a_window_where_everything_failed_does_not_pass():
    s = window_stats(_outcomes(20, 10.0, 0.01, error_every=1), 10.0, 0.0, 0.0, 2.0)
    assert s["ok"] == 0 and math.isnan(s["latency_ms"]["p99"]) and not passes(s)


@settings(max_examples=200, deadline=None)
@given(st.floats(1.0, 2000.0), st.floats(1.0, 2000.0))
def test_search_brackets_the_true_limit_within_tolerance(limit, start):
    res = search_rate(lambda r: r <= limit, start, step=1.5, rel_tol=0.1, max_trials=40, floor=0.5, ceiling=10_000)
    assert res.best_rps <= limit  # never reports a rate that failed
    assert res.best_rps >= limit / 1.1  # and stops within the tolerance below it
    assert all(ok == (r <= limit) for r, ok in res.trials)


def test_search_respects_its_trial_budget_and_its_bounds():
    calls = []
    res = search_rate(lambda r: calls.append(r) or r <= 100, 10, step=2, rel_tol=0.01, max_trials=5)
    assert len(calls) == len(res.trials) == 5 and res.best_rps == 80  # 10, 20, 40, 80 held, 160 failed
    none = search_rate(lambda r: False, 10, floor=1)
    assert none.best_rps == 0.0 and none.below_rps == 1, "nothing held, down to the floor: reported as below it"
    assert search_rate(lambda r: r <= 20, 10).below_rps is None
    assert search_rate(lambda r: True, 10, ceiling=50, max_trials=20).best_rps == 50  # all held up to the ceiling


def test_saturation_is_the_highest_offered_rate_that_held():
    ok = window_stats(_outcomes(20, 10.0, 0.01), 10.0, 0.0, 0.0, 2.0)
    slow = window_stats(_outcomes(20, 10.0, 0.2), 10.0, 0.0, 0.0, 2.0)
    rows = [{**ok, "offered_rps": 10}, {**ok, "offered_rps": 30}, {**slow, "offered_rps": 50}]
    assert saturation_rps(rows) == 30 and saturation_rps(rows[2:]) == 0.0


def test_triton_means_from_two_scrapes():
    def text(n: int, req_us: int, queue_us: int, comp_us: int) -> str:
        lab = 'model="recommend",version="1"'
        other = 'model="ranker",version="1"'
        return "\n".join(
            [
                f"nv_inference_request_success{{{lab}}} {n}",
                f"nv_inference_request_success{{{other}}} 999",
                f"nv_inference_request_duration_us{{{lab}}} {req_us}",
                f"nv_inference_queue_duration_us{{{lab}}} {queue_us}",
                f"nv_inference_compute_infer_duration_us{{{lab}}} {comp_us}",
            ]
        )

    m = triton_means(text(10, 100_000, 10_000, 80_000), text(30, 340_000, 30_000, 280_000))
    assert m == {"request_ms": 12.0, "queue_ms": 1.0, "compute_input_ms": 0.0, "compute_ms": 10.0, "compute_output_ms": 0.0, "requests": 20}
    assert triton_means(text(5, 1, 1, 1), text(5, 1, 1, 1)) == {}
