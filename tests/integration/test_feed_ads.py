"""Ads through the real stack: ``bentoml serve`` -> Triton (``feed_candidates``: recommend and
ad_ctr in one round trip, on a published `tiny` run) -> redis-server. Prices and density on the
served pages, a click charged once at its signed price, frequency caps under parallel feeds of
one user, and Redis down (no ads, the feed still answers, no click acknowledged)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

import httpx
import pytest

from genrec.ads.inventory import AdInventory
from genrec.ads.pacing import utc_day
from genrec.ads.state import AdState
from genrec.exporters.publish import publish_run, version_numbers
from genrec.feed.canary import pick_version
from tests.integration.feed_stack import feed_env, seed_users

pytestmark = pytest.mark.integration
pytest.importorskip("tritonclient.grpc")
pytest.importorskip("bentoml")
USERS = [f"u{i}" for i in range(1, 25)]


@pytest.fixture(scope="module")
def service(tiny_run, repository, triton, own_redis, feed_service):
    assert (repository / "ad_ctr").is_dir() and (repository / "feed_candidates" / "config.pbtxt").exists()
    seed_users(tiny_run, own_redis.url)
    return feed_service(
        **feed_env(tiny_run, repository, triton, own_redis),
        # a low relevance threshold and floor: tiny's pCTRs are small, and every rule is still checked
        GENREC_ADS__MIN_ECPM="0.0001",
        GENREC_ADS__FLOOR_CPC="0.02",
        # the canary test publishes a second version at the end; until then one version serves all
        GENREC_FEED__CANARY_SHARE="0.5",
        GENREC_FEED__VERSIONS_REFRESH_S="1",
    )


@pytest.fixture(scope="module")
def http(service):
    with httpx.Client(base_url=service.url, timeout=20) as c:
        yield c


@pytest.fixture(scope="module")
def inventory(tiny_run):
    return AdInventory.from_item_table(tiny_run)


def feed(http, user, **body):
    r = http.post("/v1/feed", json={"user_id": user, **body})
    assert r.status_code == 200, r.text
    return r.json()["data"]


def ads_of(page):
    return [i for i in page["items"] if i["type"] == "ad"]


def spend(url: str, campaign: int) -> float:
    async def read() -> float:
        state = AdState(url, 1.0)
        try:
            snap = await state.snapshot("any", [campaign], utc_day(time.time()), time.time())
            return snap.spend[campaign]
        finally:
            await state.close()

    return asyncio.run(read())


def first_page_with_an_ad(http) -> tuple[str, dict]:
    for user in USERS:
        page = feed(http, user, count=10)
        if ads_of(page):
            return user, page
    raise AssertionError("no seeded user was shown an ad")


def test_served_ads_carry_prices_within_the_rules(http, inventory):
    pages = [feed(http, u, count=10) for u in USERS[:12]]
    served = [a for p in pages for a in ads_of(p)]
    assert served, "ads are served to seeded users"
    for page in pages:
        assert not page["fallback"] and len(page["items"]) == 10
        kinds = {i["position"]: i["type"] for i in page["items"]}
        positions = [i["position"] for i in ads_of(page)]
        assert sum(p < 5 for p in positions) <= 1
        for p in positions:
            assert kinds.get(p - 1) in ("content", None) and kinds.get(p + 1) == "content"
    for a in served:
        row = inventory.row(a["id"])
        assert a["ad"]["campaign"] == int(inventory.campaign[row])
        assert 0.02 - 1e-9 <= a["ad"]["price_cpc"] <= float(inventory.bid_cpc[row]) + 1e-9
        assert 0.0 < a["ad"]["pctr"] < 1.0 and a["reason"] == "Sponsored"


def test_a_click_is_charged_once_at_its_signed_price(http, own_redis):
    user, page = first_page_with_an_ad(http)
    ad = ads_of(page)[0]
    campaign, price = ad["ad"]["campaign"], ad["ad"]["price_cpc"]
    before = spend(own_redis.url, campaign)
    click = {"type": "click", "item_id": ad["id"], "event_token": ad["tracking"]["event_token"], "timestamp": time.time() - 1}
    r1 = http.post("/v1/events", json={"user_id": user, "events": [click]})
    r2 = http.post("/v1/events", json={"user_id": user, "events": [click]})  # a retry without a key
    assert r1.status_code == r2.status_code == 200, (r1.text, r2.text)
    assert r1.json()["data"]["ad_clicks_charged"] == 1
    assert spend(own_redis.url, campaign) == pytest.approx(before + price, abs=1e-6)
    metrics = http.get("/metrics").text
    assert 'feed_ad_clicks_total{outcome="charged"}' in metrics and 'feed_ad_clicks_total{outcome="duplicate"}' in metrics
    assert "feed_ad_auctions_total" in metrics and "feed_ad_revenue_total" in metrics


def test_frequency_caps_hold_under_parallel_feeds_of_one_user(service, inventory):
    user = "cap-test-user"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        pages = list(pool.map(lambda _: httpx.post(f"{service.url}/v1/feed", json={"user_id": user, "count": 10}, timeout=30), range(40)))
    assert all(r.status_code == 200 for r in pages)
    shown: dict[int, int] = {}
    for r in pages:
        for a in ads_of(r.json()["data"]):
            shown[a["ad"]["campaign"]] = shown.get(a["ad"]["campaign"], 0) + 1
    assert shown, "a cold user is shown run-of-network ads"
    for campaign, n in shown.items():
        assert n <= inventory.campaign_cap(campaign), (campaign, n, inventory.campaign_cap(campaign))


def test_redis_down_serves_no_ads_and_acknowledges_no_click(http, own_redis):
    user, page = first_page_with_an_ad(http)
    ad = ads_of(page)[0]
    own_redis.stop()
    try:
        down = feed(http, user, count=10)
        assert len(down["items"]) == 10 and not ads_of(down) and "ads_unavailable" in down["degraded"]
        click = {"type": "click", "item_id": ad["id"], "event_token": ad["tracking"]["event_token"], "timestamp": time.time() - 1}
        r = http.post("/v1/events", json={"user_id": user, "events": [click]})
        assert r.status_code == 503, r.text
    finally:
        own_redis.start()
    deadline = time.time() + 10
    while "ads_unavailable" in feed(http, USERS[1], count=10)["degraded"]:
        assert time.time() < deadline, "ads come back by themselves once Redis is back"
        time.sleep(0.5)


def test_a_second_version_is_split_by_the_canary_share_and_metrics_by_version(http, tiny_run, repository, triton):
    """Last in the module: it publishes a second run into the running server (the ML engineer's
    drop-in), and the feed splits users between the two recommend versions (share 0.5)."""
    assert feed(http, USERS[0])["model_version"] == "1"
    publish_run(tiny_run, repository, triton.http_url, progress=lambda m: None)
    assert version_numbers(repository / "recommend")[-2:] == [1, 2]
    time.sleep(1.5)  # the feed reads the ready versions every second here
    users = [f"canary-{i}" for i in range(40)]
    pages = {u: feed(http, u, count=5) for u in users}
    served = {u: p["model_version"] for u, p in pages.items()}
    expected = {u: pick_version(u, [1, 2], 0.5) or "2" for u in users}
    assert served == expected, "each user is on the version its stable hash picks"
    assert set(served.values()) == {"2", "1"}, "both versions serve a share of users"
    for version in ("1", "2"):  # each scored by the ad_ctr published with it (the control group through two calls)
        assert any(ads_of(p) for u, p in pages.items() if served[u] == version), f"no ads for users on version {version}"
        assert all("ads_unavailable" not in p["degraded"] for p in pages.values())
    metrics = http.get("/metrics").text
    assert 'version="1"' in metrics and 'version="2"' in metrics, "the feed's Triton metrics are split by version"
