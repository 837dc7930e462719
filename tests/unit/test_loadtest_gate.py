"""loadtest's gate, workload sampler and load shape, without locust running."""

from __future__ import annotations

import json
import random
from collections import Counter

from loadtest import gate
from loadtest.shapes import users_at
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
