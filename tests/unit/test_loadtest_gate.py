"""loadtest's gate, workload sampler and load shape, without locust running."""

from __future__ import annotations

import json
import random
from collections import Counter

from loadtest import gate
from loadtest.shapes import expected_rate, users_at
from loadtest.workload import Workload


def _ep(name="recommend", n=100, fail=0, p99=20.0):
    return gate.Endpoint(name, n, fail, p99 / 2, p99 * 0.9, p99, p99 * 1.1, n / 10)


def test_a_run_within_every_threshold_passes():
    v = gate.judge([_ep()], ["recommend"], 100, 0, gate.Thresholds(), 10.0, target_rps=10, generator_cpu=0.2)
    assert v.passed and v.reasons == [] and v.achieved_rps == 10
    assert "GATE PASSED" in gate.describe(v)


def test_each_broken_threshold_is_a_reason():
    t = gate.Thresholds()
    assert "P99 60.0 ms > 50 ms" in gate.judge([_ep(p99=60)], ["recommend"], 100, 0, t, 10.0).reasons[0]
    assert "P99 90.0 ms > 80 ms" in gate.judge([_ep("/v1/feed", p99=90)], ["/v1/feed"], 100, 0, t, 10.0).reasons[0]
    assert "failure ratio" in gate.judge([_ep(fail=1)], ["recommend"], 100, 1, t, 10.0).reasons[0]  # 1% > 0.1%
    assert "no requests" in gate.judge([], ["recommend"], 0, 0, t, 10.0).reasons[0]
    assert "target" in gate.judge([_ep(n=20)], ["recommend"], 20, 0, t, 10.0, target_rps=10).reasons[0]


def test_a_p99_measured_well_under_the_target_rate_fails():
    # 10 req/s asked, 7 reached: a good P99 at 70% of the load is not a pass (the old 50% let it through)
    assert gate.Thresholds().min_rate_ratio == 0.9
    v = gate.judge([_ep(n=70, p99=5)], ["recommend"], 70, 0, gate.Thresholds(), 10.0, target_rps=10)
    assert not v.passed and "under 90% of the target 10 req/s" in v.reasons[0]
    assert gate.judge([_ep(n=92, p99=5)], ["recommend"], 92, 0, gate.Thresholds(), 10.0, target_rps=10).passed


def test_step_and_spike_runs_are_held_to_the_rate_their_shape_expected():
    # -u 4 in 4 steps over 60 s: 1, 2, 3, 4 users (each paced at rate/4) -> 62.5% of --rate on average
    assert expected_rate("step", 10, 4, 60, 60, steps=4) == 6.25
    # spike x3 in the middle third of 90 s: 4, 12, 4 users -> 20/3 / 4 of --rate
    assert abs(expected_rate("spike", 10, 4, 90, 90, spike_factor=3) - 10 * (4 + 12 + 4) / 3 / 4) < 0.05
    assert expected_rate("constant", 10, 4, 60, 60) == 10
    target = expected_rate("spike", 10, 4, 90, 90)
    half = gate.judge([_ep(n=750, p99=5)], ["recommend"], 750, 0, gate.Thresholds(), 90.0, target_rps=target)  # 8.3 req/s
    assert not half.passed and "target 16.7 req/s" in half.reasons[0]
    full = gate.judge([_ep(n=1500, p99=5)], ["recommend"], 1500, 0, gate.Thresholds(), 90.0, target_rps=target)
    assert full.passed


def test_a_gated_request_without_a_p99_limit_fails():
    t = gate.Thresholds(p99_ms={"recommend": 50.0})
    v = gate.judge([_ep("recommend"), _ep("/v1/feed", p99=1)], ["recommend", "/v1/feed"], 200, 0, t, 10.0)
    assert not v.passed and v.reasons == ["/v1/feed: no P99 limit is configured for it, so its P99 cannot pass"]


def test_a_cpu_bound_generator_fails_the_gate_even_with_a_good_p99():
    for cpu, warning in ((0.97, False), (None, True)):
        v = gate.judge([_ep(p99=5)], ["recommend"], 100, 0, gate.Thresholds(), 10.0, generator_cpu=cpu, generator_cpu_warning=warning)
        assert not v.passed and "CPU-bound" in v.reasons[0] and "--processes" in v.reasons[0]


def test_ungated_requests_only_count_towards_failures():
    v = gate.judge([_ep("recommend"), _ep("/v1/items/{id}", p99=900)], ["recommend"], 200, 0, gate.Thresholds(), 10.0)
    assert v.passed
    assert json.loads(json.dumps(v.as_dict()))["endpoints"][1]["p99_ms"] == 900


def test_zipf_draws_favour_the_first_ranks_and_reach_the_tail():
    users = [{"user_id": f"u{i}"} for i in range(200)]
    w = Workload(users, n_items=10, exponent=1.1)
    rng = random.Random(1)
    counts = Counter(w.draw(rng)["user_id"] for _ in range(20_000))
    assert counts["u0"] > counts["u1"] > counts["u9"] > counts.get("u150", 0)
    assert len(counts) > 150  # the long tail is visited too


def test_load_shapes():
    def users(shape, t):
        out = users_at(shape, t, 4, 4.0, 90, steps=3, spike_factor=3.0)
        return out and out[0]

    assert users("constant", 10) == 4 and users("constant", 95) is None
    assert [users("step", t) for t in (0, 31, 61, 89)] == [1, 3, 4, 4]
    assert [users("spike", t) for t in (10, 45, 80)] == [4, 12, 4]
    assert users_at("constant", 1e6, 2, 2.0, None) == (2, 2.0)  # no run time: until stopped
