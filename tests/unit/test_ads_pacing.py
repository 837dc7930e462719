"""Budget pacing (ads/pacing.py): the target curve, the throttle's rules, and the controller on
simulated click streams (no Redis: the state is passed from one interval to the next)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from genrec.ads.pacing import (
    DAY_S,
    DIURNAL,
    HOUR_S,
    PaceState,
    PacingController,
    TrafficCurve,
    day_start,
    hour_of_day,
    target_spend,
    utc_day,
)
from genrec.settings import AdsConfig

DAY = "20260101"
T0 = day_start(DAY)


def test_the_traffic_curve_is_a_cumulative_share_of_the_day():
    curve = TrafficCurve()
    assert sum(curve.hourly) == pytest.approx(1.0)
    assert curve.share_before(0) == 0.0 and curve.share_before(DAY_S) == 1.0
    assert curve.share_before(-5) == 0.0 and curve.share_before(DAY_S + 5) == 1.0
    points = [curve.share_before(s) for s in range(0, DAY_S + 1, 600)]
    assert all(b >= a for a, b in zip(points, points[1:]))
    # uniform within an hour, weighted by the hour's traffic
    assert curve.share_between(3 * HOUR_S, 3 * HOUR_S + 1800) == pytest.approx(curve.hourly[3] / 2)
    assert curve.share_between(20 * HOUR_S, 21 * HOUR_S) == pytest.approx(DIURNAL[20] / sum(DIURNAL))
    # the default shape: a night trough well under the evening peak
    assert min(curve.hourly) == curve.hourly[4] and max(curve.hourly) == curve.hourly[21]


def test_a_flat_curve_gives_an_even_target_and_bad_curves_are_refused():
    flat = TrafficCurve([1.0] * 24)
    assert target_spend(240.0, flat, 6 * HOUR_S) == pytest.approx(60.0)
    assert target_spend(240.0, flat, DAY_S) == pytest.approx(240.0)
    for bad in ([1.0] * 23, [0.0] * 24, [1.0] * 23 + [-1.0]):
        with pytest.raises(ValueError):
            TrafficCurve(bad)


def test_days_and_hours_are_utc():
    assert utc_day(T0) == DAY and utc_day(T0 + DAY_S - 1) == DAY and utc_day(T0 + DAY_S) == "20260102"
    assert day_start(utc_day(T0 + 12345)) == T0
    assert hour_of_day(DAY, T0) == 0 and hour_of_day(DAY, T0 + 13.5 * HOUR_S) == 13
    assert hour_of_day(DAY, T0 + DAY_S + 60) == 23  # a click after midnight on yesterday's ad
    assert hour_of_day(DAY, T0 - 60) == 0


def test_out_of_budget_stops_ahead_of_the_curve_floors_behind_it_serves():
    pc = PacingController(p_min=0.01)
    noon = 12 * HOUR_S
    assert pc.probability(demand=100.0, spend=100.0, budget=100.0, seconds=noon) == 0.0
    assert pc.probability(demand=100.0, spend=10.0, budget=0.0, seconds=noon) == 0.0
    ahead = target_spend(100.0, pc.curve, noon + pc.horizon_s) + 1.0
    assert pc.probability(demand=100.0, spend=ahead, budget=100.0, seconds=noon) == 0.01
    assert pc.probability(demand=None, spend=1.0, budget=100.0, seconds=noon) == 1.0  # no click seen yet
    # on the curve, a campaign that would spend 4x its budget unthrottled gets about 1/4
    on = target_spend(100.0, pc.curve, noon)
    assert pc.probability(demand=400.0, spend=on, budget=100.0, seconds=noon) == pytest.approx(0.25, rel=1e-6)
    # behind the curve it gets more, ahead of it less
    assert pc.probability(demand=400.0, spend=on - 2.0, budget=100.0, seconds=noon) > 0.25
    assert pc.probability(demand=400.0, spend=on + 2.0, budget=100.0, seconds=noon) < 0.25


@given(
    demand=st.one_of(st.none(), st.floats(1e-6, 1e6)),
    spend=st.floats(0, 1e4),
    budget=st.floats(0, 1e4),
    seconds=st.floats(-100, DAY_S + 100),
)
def test_the_probability_is_zero_or_within_p_min_and_one(demand, spend, budget, seconds):
    pc = PacingController(p_min=0.02)
    p = pc.probability(demand, spend, budget, seconds)
    assert p == 0.0 or 0.02 <= p <= 1.0
    assert (p == 0.0) == (budget <= 0 or spend >= budget)


def test_update_lowers_p_ahead_of_the_curve_and_raises_it_behind():
    pc = PacingController(p_min=0.001)
    noon = T0 + 12 * HOUR_S
    target = target_spend(100.0, pc.curve, noon - T0)
    prev = PaceState(p=0.5, t=noon - 60, spend=target, spend_ema=1.0, exposure_ema=1.0 / 300.0)  # demand 300
    ahead = pc.update(prev, target + 3.0, 100.0, DAY, noon)
    behind = pc.update(prev, target - 3.0 + 0.01, 100.0, DAY, noon)
    assert ahead.p < prev.p < behind.p
    assert ahead.t == noon and ahead.spend == target + 3.0
    assert not pc.due(ahead, noon + 59) and pc.due(ahead, noon + 60) and pc.due(PaceState(), noon)


def test_the_demand_estimate_counts_only_todays_spend_after_midnight():
    pc = PacingController()
    yesterday = PaceState(p=0.5, t=T0 - 30, spend=80.0, spend_ema=40.0, exposure_ema=0.1)
    s = pc.update(yesterday, 0.3, 100.0, DAY, T0 + 30)
    # yesterday's spend (80) is not today's: the interval spent 0.3, not 0.3 - 80
    decay = math.exp(-60 / pc.smoothing_s)
    assert s.spend_ema == pytest.approx(40.0 * decay + 0.3)
    assert s.exposure_ema == pytest.approx(0.1 * decay + 0.5 * pc.curve.share_before(30))


def test_from_config():
    cfg = AdsConfig(pacing_interval_s=30, pacing_horizon_s=1200, pacing_smoothing_s=300, pacing_p_min=0.05)
    pc = PacingController.from_config(cfg)
    assert (pc.interval_s, pc.horizon_s, pc.smoothing_s, pc.p_min) == (30, 1200, 300, 0.05)


def _simulate(demand_per_day: float, budget: float, price: float, seed: int, traffic_noise: float = 0.1) -> tuple[np.ndarray, PaceState]:
    """One day minute by minute: a campaign whose unthrottled spend would be ``demand_per_day``
    (following this day's traffic, which deviates from the expected curve by ``traffic_noise``
    per hour), Poisson clicks at ``price``, the throttle updated every minute. Hourly spend."""
    pc = PacingController()
    rng = np.random.default_rng(seed)
    actual = np.asarray(pc.curve.hourly) * rng.lognormal(0, traffic_noise, 24)
    state, spend = PaceState(), 0.0
    hourly = np.zeros(24)
    for minute in range(24 * 60):
        now = T0 + 60 * minute
        if pc.due(state, now):
            state = pc.update(state, spend, budget, DAY, now)
        expected_clicks = state.p * demand_per_day * actual[minute // 60] / 60 / price
        n = int(rng.poisson(expected_clicks))
        for _ in range(n):
            if spend >= budget:  # charge_click's check
                break
            spend += price
            hourly[minute // 60] += price
    return hourly, state


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_controller_follows_the_curve_and_spends_the_budget(seed):
    budget, price = 1000.0, 0.25  # 4000 clicks a day
    hourly, state = _simulate(demand_per_day=3 * budget, budget=budget, price=price, seed=seed)
    target = budget * np.asarray(TrafficCurve().hourly)
    within = np.abs(hourly - target) <= 0.2 * target
    assert within.mean() >= 0.9, (hourly / target).round(2)
    assert hourly.sum() >= 0.95 * budget
    assert hourly.sum() <= budget + price  # never more than one click over
    assert state.demand == pytest.approx(3 * budget, rel=0.35)  # it learnt the demand


def test_without_pacing_the_same_campaign_runs_out_early():
    budget, price = 1000.0, 0.25
    curve, spend, out_minute = TrafficCurve(), 0.0, None
    rng = np.random.default_rng(0)
    for minute in range(24 * 60):
        if spend >= budget:
            out_minute = minute
            break
        share = curve.share_between(60 * minute, 60 * minute + 60)
        spend += price * rng.poisson(3 * budget * share / price)
    assert out_minute is not None and out_minute < 16 * 60


def test_a_campaign_whose_demand_is_under_its_budget_is_served_all_day():
    hourly, state = _simulate(demand_per_day=500.0, budget=1000.0, price=0.25, seed=0)
    assert state.p == 1.0
    assert 400.0 < hourly.sum() < 600.0
