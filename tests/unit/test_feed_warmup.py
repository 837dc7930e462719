"""The deploy warm-up (``feed/warmup.py``) with fakes and a fake clock: the most recently active
users are warmed on the named version, at the bounded rate and concurrency, within the budget;
users without history are skipped and failures counted without stopping the rest."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from genrec.feed.history import History
from genrec.feed.ports import RecommendFailed, UserState
from genrec.feed.warmup import Pacer, WarmupPlan, warm_version


class FakeClock:
    """Time moves only when someone sleeps (and by ``call_s`` per recommend call)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, s: float) -> None:
        self.now += s
        await asyncio.sleep(0)


def history(n: int) -> History:
    return History(np.arange(n, dtype=np.int64), np.zeros(n, np.int64), np.arange(n, dtype=np.float64), np.ones(n, np.int64))


class Fakes:
    def __init__(self, users: list[str], clock: FakeClock, call_s: float = 0.0, empty=(), failing=()) -> None:
        self.users, self.clock, self.call_s = users, clock, call_s
        self.empty, self.failing = set(empty), set(failing)
        self.calls: list[tuple[str, str, float]] = []
        self.in_flight = self.max_in_flight = 0
        self.outcomes: list[str] = []

    async def active(self, limit: int) -> list[str]:
        return self.users[:limit]

    async def state(self, user: str) -> UserState:
        return UserState(history(0 if user in self.empty else 5), [], 1)

    async def encode(self, user: str, state: UserState, version: str) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.calls.append((user, version, self.clock.now))
        try:
            await self.clock.sleep(self.call_s)
            if user in self.failing:
                raise RecommendFailed("unavailable", "down")
        finally:
            self.in_flight -= 1

    def run(self, plan: WarmupPlan, version: str = "7"):
        return asyncio.run(
            warm_version(version, plan, self.active, self.state, self.encode, self.outcomes.append, self.clock, self.clock.sleep)
        )


def test_the_most_recent_users_are_warmed_on_the_named_version_at_the_rate():
    clock = FakeClock()
    f = Fakes([f"u{i}" for i in range(50)], clock)
    report = f.run(WarmupPlan(users=20, rate_per_s=4.0, budget_s=60.0))
    assert report.outcome == "done" and report.asked == 20 and report.warmed == 20
    assert [u for u, _, _ in f.calls] == [f"u{i}" for i in range(20)], "the index's order, most recent first"
    assert {v for _, v, _ in f.calls} == {"7"}, "the new version is named on every call"
    starts = [t for _, _, t in f.calls]
    assert np.diff(starts) == pytest.approx([0.25] * 19), "4 calls a second, no burst"
    assert f.outcomes == ["warmed"] * 20


def test_concurrency_bounds_calls_in_flight_and_the_rate_still_holds():
    clock = FakeClock()
    f = Fakes([f"u{i}" for i in range(30)], clock, call_s=1.0)  # a call is slower than the interval
    report = f.run(WarmupPlan(users=30, rate_per_s=10.0, budget_s=600.0, concurrency=2))
    assert report.warmed == 30 and f.max_in_flight == 2
    starts = sorted(t for _, _, t in f.calls)
    assert all(b - a >= 0.1 - 1e-9 for a, b in zip(starts, starts[1:])), "never faster than the rate"


def test_the_budget_stops_new_calls_and_is_reported():
    clock = FakeClock()
    f = Fakes([f"u{i}" for i in range(100)], clock)
    report = f.run(WarmupPlan(users=100, rate_per_s=2.0, budget_s=10.0))
    assert report.outcome == "budget"
    assert 19 <= report.warmed <= 21 and report.seconds <= 10.5
    assert all(t - 100.0 < 10.0 for _, _, t in f.calls), "no call starts past the budget"


def test_users_without_history_are_skipped_and_failures_do_not_stop_the_rest():
    clock = FakeClock()
    f = Fakes(["a", "b", "c", "d"], clock, empty={"b"}, failing={"c"})
    report = f.run(WarmupPlan(users=10, rate_per_s=100.0, budget_s=10.0))
    assert (report.asked, report.warmed, report.failed, report.skipped) == (4, 2, 1, 1)
    assert [u for u, _, _ in f.calls] == ["a", "c", "d"], "no recommend call for a user with nothing to encode"
    assert sorted(f.outcomes) == ["failed", "skipped", "warmed", "warmed"]


def test_an_empty_or_unreadable_index_ends_at_once():
    clock = FakeClock()
    assert Fakes([], clock).run(WarmupPlan(10, 1.0, 10.0)).outcome == "no_users"

    async def broken(limit: int) -> list[str]:
        raise ConnectionError("redis down")

    f = Fakes(["a"], clock)
    report = asyncio.run(warm_version("3", WarmupPlan(10, 1.0, 10.0), broken, f.state, f.encode, clock=clock, sleep=clock.sleep))
    assert report.outcome == "error" and "redis down" in report.error and not f.calls


def test_the_pacer_does_not_bank_idle_time_into_a_burst():
    clock = FakeClock()
    pacer = Pacer(2.0, clock, clock.sleep)

    async def go() -> list[float]:
        out = []
        await pacer.wait()
        out.append(clock.now)
        clock.now += 10.0  # idle for a while (e.g. a slow history read)
        for _ in range(3):
            await pacer.wait()
            out.append(clock.now)
        return out

    t = asyncio.run(go())
    assert np.diff(t[1:]) == pytest.approx([0.5, 0.5])


def test_the_warm_up_settings_have_caps_and_env_overrides():
    from genrec.settings import FeedConfig, named_config

    cfg = named_config("tiny", environ={"GENREC_FEED__WARM_USERS": "50", "GENREC_FEED__WARM_RATE_PER_S": "2.5"}).feed
    assert (cfg.warm_users, cfg.warm_rate_per_s, cfg.warm_concurrency) == (50, 2.5, 1)
    for bad in ({"warm_users": -1}, {"warm_rate_per_s": 0.0}, {"warm_concurrency": 5}, {"warm_budget_s": 4000.0}):
        with pytest.raises(ValueError):
            FeedConfig(**bad)  # type: ignore[arg-type]
