"""Ad state on a real redis-server (ads/state.py): frequency caps and budgets under concurrency,
idempotent click charges, the shared pacing throttle, TTLs, hash tags, and Redis down."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
import redis
from redis.crc import key_slot

from genrec.ads.pacing import HOUR_S, PacingController, day_start
from genrec.ads.state import AdState, Click, ServedAd, campaign_key, user_key
from genrec.feed.ports import StoreUnavailable
from genrec.runtime.redis_server import RedisServer

pytestmark = pytest.mark.integration

DAY = "20260101"
T0 = day_start(DAY)
TTL = 3_600
T = TypeVar("T")


def _run(make: Callable[..., AdState], body: Callable[..., Awaitable[T]], replicas: int = 1) -> T:
    """Run ``body(*states)`` with ``replicas`` AdState clients (each its own connection pool,
    as separate feed replicas would have), closed afterwards."""

    async def main() -> T:
        states = [make() for _ in range(replicas)]
        try:
            return await body(*states)
        finally:
            for s in states:
                await s.close()

    return asyncio.run(main())


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make(redis_url: str, prefix: str) -> Callable[..., AdState]:
    def make_state(**kw) -> AdState:
        kw.setdefault("pacing", PacingController())
        kw.setdefault("ttl_s", TTL)
        return AdState(redis_url, 2.0, prefix, **kw)

    return make_state


def _ad(campaign: int, cap: int = 3, item: int = 500, price: float = 0.42) -> ServedAd:
    return ServedAd(campaign=campaign, frequency_cap=cap, item=item, price=price, bucket=1, trace_id="ab" * 16)


def test_concurrent_pages_of_one_user_never_exceed_a_cap(make, redis_url):
    async def body(*replicas: AdState) -> list[list[bool]]:
        calls = [r.record_served("u1", DAY, [_ad(7, cap=3)], TTL, now=T0 + 100) for r in replicas for _ in range(10)]
        return await asyncio.gather(*calls)

    answers = _run(make, body, replicas=5)
    assert sum(a[0] for a in answers) == 3  # 50 concurrent pages, cap 3: exactly 3 placed
    state = make()
    r = redis.Redis.from_url(redis_url)
    assert r.hget(state.cap_key("u1", DAY), "7") == b"3"
    records = [json.loads(x) for x in r.lrange(state.served_key("u1"), 0, -1)]
    assert len(records) == 3
    assert records[0] == {"ts": T0 + 100, "item": 500, "campaign": 7, "price": 0.42, "bucket": 1, "trace_id": "ab" * 16}


def test_a_page_is_checked_ad_by_ad_in_order(make):
    async def body(s: AdState) -> tuple[list[bool], list[bool], dict[int, int]]:
        first = await s.record_served("u2", DAY, [_ad(1, cap=2), _ad(2, cap=1), _ad(1, cap=2)], TTL, now=T0)
        second = await s.record_served("u2", DAY, [_ad(1, cap=2), _ad(2, cap=1), _ad(3, cap=1)], TTL, now=T0 + 60)
        other_day = await s.snapshot("u2", [1, 2, 3], "20260102", T0 + 86_400)
        assert (await s.snapshot("u2", [1, 2, 3], DAY, T0)).cap_counts == {1: 2, 2: 1, 3: 1}
        return first, second, other_day.cap_counts

    first, second, other_day = _run(make, body)
    assert first == [True, True, True]
    assert second == [False, False, True]
    assert other_day == {1: 0, 2: 0, 3: 0}  # caps are per UTC day


def test_the_served_list_is_capped_and_every_key_expires(make, redis_url):
    async def body(s: AdState) -> None:
        await s.record_served("u3", DAY, [_ad(c, cap=5) for c in range(30)], TTL)  # now=None: the server's clock
        await s.charge_click(9, DAY, "tok", 0.2, 10.0, T0 + 60)

    _run(lambda: make(served_cap=10), body)
    r = redis.Redis.from_url(redis_url)
    s = make()
    served = [json.loads(x) for x in r.lrange(s.served_key("u3"), 0, -1)]
    assert [x["campaign"] for x in served] == list(range(20, 30))  # the newest 10
    assert served[0]["ts"] > 1.7e9  # stamped with the Redis server's clock
    for key in (s.cap_key("u3", DAY), s.served_key("u3"), s.spend_key(9, DAY), s.charged_key(9, DAY)):
        assert 0 < r.ttl(key) <= TTL, key


def test_concurrent_clicks_overspend_a_budget_by_at_most_one_price(make, redis_url):
    price, budget = 0.3, 1.0

    async def body(*replicas: AdState) -> list[str]:
        calls = [r.charge_click(11, DAY, f"tok-{i}-{j}", price, budget, T0 + 600) for i, r in enumerate(replicas) for j in range(10)]
        return await asyncio.gather(*calls)

    outcomes = _run(make, body, replicas=5)
    assert outcomes.count("charged") == 4  # 0, 0.3, 0.6, 0.9 were under the budget
    assert outcomes.count("exhausted") == 46
    spend = _run(make, lambda s: s.snapshot("x", [11], DAY, T0 + 600)).spend[11]
    assert budget <= spend <= budget + price
    assert spend == pytest.approx(4 * price)  # exact: micro-units


def test_a_click_token_charges_once_also_concurrently(make):
    async def body(*replicas: AdState) -> tuple[list[str], list[str], float]:
        calls = [r.charge_click(12, DAY, "same-token", 0.5, 100.0, T0 + 60) for r in replicas for _ in range(5)]
        concurrent = await asyncio.gather(*calls)
        again = await replicas[0].charge_clicks([Click(12, "t2", 0.25, 100.0), Click(12, "t2", 0.25, 100.0)], DAY, T0 + 120)
        return concurrent, again, (await replicas[0].snapshot("x", [12], DAY, T0 + 120)).spend[12]

    concurrent, again, spend = _run(make, body, replicas=4)
    assert concurrent.count("charged") == 1 and concurrent.count("duplicate") == 19
    assert again == ["charged", "duplicate"]  # a duplicate within one batch too
    assert spend == pytest.approx(0.75)


def test_spend_is_kept_per_hour_of_the_day_of_the_serve(make):
    async def body(s: AdState) -> dict[int, list[float]]:
        await s.charge_click(13, DAY, "a", 0.1, 10.0, T0 + 30)
        await s.charge_click(13, DAY, "b", 0.2, 10.0, T0 + 5 * HOUR_S + 1)
        await s.charge_click(13, DAY, "c", 0.4, 10.0, T0 + 86_400 + 120)  # clicked after midnight
        return await s.hourly_spend([13], DAY)

    hourly = _run(make, body)[13]
    assert hourly[0] == pytest.approx(0.1) and hourly[5] == pytest.approx(0.2) and hourly[23] == pytest.approx(0.4)
    assert sum(hourly) == pytest.approx(0.7)


def test_every_replica_applies_the_same_throttle_updated_once_per_interval(make, redis_url):
    budget = 100.0
    noon = T0 + 12 * HOUR_S
    p_min = PacingController().p_min

    async def body(a: AdState, b: AdState) -> tuple[float, ...]:
        fresh = (await a.snapshot("u", [14], DAY, noon - 900)).serve_probability[14]  # no click, no budget: served
        await a.charge_clicks([Click(14, f"k{i}", 0.5, budget) for i in range(140)], DAY, noon - 600)  # 70 by 11:50
        ahead = (await a.snapshot("u", [14], DAY, noon, {14: budget})).serve_probability[14]
        seen = (await b.snapshot("u", [14], DAY, noon + 30, {14: budget})).serve_probability[14]  # not due: a's value
        # a replica that read the throttle before another one wrote it does not overwrite it
        stale = await a._pace(keys=[a.spend_key(14, DAY)], args=[repr(noon - 60), "0.9", repr(noon + 40), 0, "0", "0", TTL])
        later = (await b.snapshot("u", [14], DAY, noon + 60, {14: budget})).serve_probability[14]  # due: b updates it
        return fresh, ahead, seen, float(stale), later

    fresh, ahead, seen, stale, later = _run(make, body, replicas=2)
    assert fresh == 1.0
    assert ahead == seen == stale == later == p_min  # far ahead of noon's target (about 40): the floor
    r = redis.Redis.from_url(redis_url)
    assert float(r.hget(make().spend_key(14, DAY), "t")) == noon + 60


def test_snapshot_without_pacing_serves_every_campaign(make):
    async def body(s: AdState):
        await s.charge_click(15, DAY, "a", 1.0, 1.0, T0)
        return await s.snapshot("u", [15, 16], DAY, T0 + 60, {15: 1.0, 16: 5.0})

    snap = _run(lambda: make(pacing=None), body)
    assert snap.serve_probability == {15: 1.0, 16: 1.0}
    assert snap.spend == {15: 1.0, 16: 0.0}
    assert _run(make, lambda s: s.snapshot("u", [], DAY, T0)).cap_counts == {}


def test_campaign_rows_are_read_at_most_once_per_cache_period_and_caps_every_time(make):
    async def body(s: AdState):
        first = await s.snapshot("u", [21], DAY, T0, {21: 5.0})
        await s.charge_click(21, DAY, "tok", 1.0, 5.0, T0)
        await s.record_served("u", DAY, [_ad(21)], TTL, T0)
        cached = await s.snapshot("u", [21], DAY, T0 + 0.5, {21: 5.0})
        fresh = await s.snapshot("u", [21], DAY, T0 + 1.0, {21: 5.0})
        return first, cached, fresh

    first, cached, fresh = _run(lambda: make(pacing=None, campaign_cache_s=1.0), body)
    assert first.spend == {21: 0.0} and cached.spend == {21: 0.0}, "within the period the spend read is reused"
    assert cached.cap_counts == {21: 1}, "the user's cap counts are read on every request"
    assert fresh.spend == {21: 1.0}, "after the period the row is read again"


def test_the_keys_of_each_script_share_one_cluster_slot(make, redis_url, prefix):
    s = make()
    user, campaign = "user:42@x", 1234
    assert key_slot(s.cap_key(user, DAY).encode()) == key_slot(s.served_key(user).encode())
    assert key_slot(s.spend_key(campaign, DAY).encode()) == key_slot(s.charged_key(campaign, DAY).encode())
    assert s.cap_key(user, DAY) == f"{prefix}:{{u:{user}}}:cap:{DAY}" == user_key(prefix, user, f"cap:{DAY}")
    assert s.spend_key(campaign, DAY) == f"{prefix}:{{c:1234}}:spend:{DAY}" == campaign_key(prefix, campaign, f"spend:{DAY}")

    async def body(st: AdState) -> None:
        await st.record_served(user, DAY, [_ad(campaign)], TTL, now=T0)
        await st.charge_click(campaign, DAY, "tok", 0.1, 1.0, T0)
        await st.snapshot(user, [campaign], DAY, T0 + 60, {campaign: 1.0})

    _run(make, body)
    r = redis.Redis.from_url(redis_url)
    keys = sorted(k.decode() for k in r.scan_iter(f"{prefix}:*"))
    assert keys == sorted([s.cap_key(user, DAY), s.served_key(user), s.spend_key(campaign, DAY), s.charged_key(campaign, DAY)])
    slots = {k: key_slot(k.encode()) for k in keys}
    assert len({slots[s.cap_key(user, DAY)], slots[s.served_key(user)]}) == 1
    assert len({slots[s.spend_key(campaign, DAY)], slots[s.charged_key(campaign, DAY)]}) == 1


def test_redis_down_is_store_unavailable_for_every_call():
    server = RedisServer(maxmemory="16mb").start()
    url = server.url

    async def body() -> list[str]:
        s = AdState(url, 0.5, "down", pacing=PacingController())
        assert await s.ping()
        await s.record_served("u", DAY, [_ad(1)], TTL, now=T0)  # scripts loaded, connections pooled
        server.stop()
        failures = []
        calls = {
            "ping": lambda: s.ping(),
            "snapshot": lambda: s.snapshot("u", [1, 2], DAY, T0 + 60, {1: 1.0}),
            "record_served": lambda: s.record_served("u", DAY, [_ad(1)], TTL, now=T0),
            "charge_click": lambda: s.charge_click(1, DAY, "tok", 0.1, 1.0, T0),
            "charge_clicks": lambda: s.charge_clicks([Click(1, "tok", 0.1, 1.0)], DAY, T0),
            "hourly_spend": lambda: s.hourly_spend([1], DAY),
        }
        for name, call in calls.items():
            with pytest.raises(StoreUnavailable):
                await call()
            failures.append(name)
        await s.close()
        return failures

    try:
        assert len(asyncio.run(body())) == 6
    finally:
        server.stop()


def test_the_pacing_bench_runs_a_small_day_end_to_end(tmp_path):
    """``python -m bench.ads_pacing`` on a tiny market (its figures need the full scale): the
    files, the summary, overspend within one click, retried clicks charged once."""
    from bench.ads_pacing import main

    assert main(["--campaigns", "5", "--categories", "5", "--auctions", "20000", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "ads_pacing.json").read_text())
    assert (tmp_path / "ads_pacing.png").stat().st_size > 10_000
    assert len(result["campaigns"]) == 5 and len(result["campaigns"][0]["paced_hourly"]) == 24
    for mode in ("paced", "unpaced"):
        s = result["summary"][mode]
        assert s["overspend_within_one_click"]
        assert s["charge_outcomes"]["duplicate"] <= s["clicks_retried"]
        assert s["charge_outcomes"]["charged"] + s["charge_outcomes"]["exhausted"] + s["charge_outcomes"]["duplicate"] == (
            s["clicks"] + s["clicks_retried"]
        )
    assert result["summary"]["unpaced"]["campaigns_out_of_budget"] >= 4  # budgets are under demand
    assert {"machine", "versions", "settings"} <= set(result)
