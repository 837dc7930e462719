"""Ads through ``FeedApp`` with in-memory fakes of Redis and Triton: placement and prices on the
page, the density rules across pages, fail-closed on a Redis error, a cap lost to a concurrent
feed, click charges (once per token, acknowledged only when charged) and the experiment bucket.
The same code runs on the real Redis and Triton in tests/integration/test_feed_ads.py."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from genrec.ads.inventory import AdInventory
from genrec.ads.serving import AdServer
from genrec.ads.state import AdSnapshot, Click, ServedAd
from genrec.data.schema import ItemKind
from genrec.feed.envelope import ErrorKind, FeedError
from genrec.feed.events import Event
from genrec.feed.ports import StoreUnavailable
from genrec.settings import AdsConfig
from tests.unit.test_feed_app import N_ITEMS, data_of, make_app


class FakeAdStore:
    def __init__(self) -> None:
        self.caps: dict[tuple[str, int], int] = {}
        self.spend: dict[int, float] = {}
        self.charged: set[str] = set()
        self.down = False
        self.refuse_all = False  # a concurrent feed took every cap first

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("down")

    async def snapshot(self, user_id: str, campaigns: Sequence[int], day: str, now: float, budgets: Mapping[int, float] | None = None):
        self._check()
        return AdSnapshot(
            {c: self.caps.get((user_id, c), 0) for c in campaigns},
            {c: self.spend.get(c, 0.0) for c in campaigns},
            dict.fromkeys(campaigns, 1.0),
        )

    async def record_served(self, user_id: str, day: str, ads: Sequence[ServedAd], ttl_s: int, now: float | None = None) -> list[bool]:
        self._check()
        out = []
        for ad in ads:
            n = self.caps.get((user_id, ad.campaign), 0)
            ok = n < ad.frequency_cap and not self.refuse_all
            if ok:
                self.caps[(user_id, ad.campaign)] = n + 1
            out.append(ok)
        return out

    async def charge_clicks(self, clicks: Sequence[Click], day: str, now: float) -> list[str]:
        self._check()
        out = []
        for k in clicks:
            if k.token_id in self.charged:
                out.append("duplicate")
            elif self.spend.get(k.campaign, 0.0) >= k.budget:
                out.append("exhausted")
            else:
                self.charged.add(k.token_id)
                self.spend[k.campaign] = self.spend.get(k.campaign, 0.0) + k.price
                out.append("charged")
        return out


def ads_app(cfg: AdsConfig | None = None):
    app, store, rec = make_app()
    kind = app.catalogue.kind
    ads = np.flatnonzero(kind == ItemKind.AD)
    n = N_ITEMS
    cols = {
        "kind": kind,
        "category": app.catalogue.category,
        "advertiser": np.where(kind == ItemKind.AD, np.arange(n) % 3, -1),
        "campaign": np.where(kind == ItemKind.AD, np.arange(n), -1),  # one campaign per ad
        "bid_cpc": np.where(kind == ItemKind.AD, 0.5 + (np.arange(n) % 5) / 10, np.nan),
        "daily_budget": np.where(kind == ItemKind.AD, 10.0, np.nan),
        "frequency_cap": np.where(kind == ItemKind.AD, 2, -1),
        "target_categories": np.where((kind == ItemKind.AD)[:, None], app.catalogue.category[:, None].repeat(3, 1), -1),
    }
    inventory = AdInventory.from_columns(cols)
    assert len(inventory) == ads.size
    ad_store = FakeAdStore()
    features = lambda history, items: np.ones((len(items), 3), np.float32)  # noqa: E731
    app.ads = AdServer(inventory, cfg or AdsConfig(), ad_store, features, app.catalogue.category, rng=np.random.default_rng(0))
    app.ad_state = ad_store  # type: ignore[assignment]
    return app, store, rec, ad_store


def ad_items(page: dict) -> list[dict]:
    return [i for i in page["items"] if i["type"] == "ad"]


def test_ads_are_placed_priced_and_spaced_across_pages():
    app, store, rec, ad_store = ads_app()
    first = data_of(asyncio.run(app.feed("u1", 10, None, "mobile")))
    second = data_of(asyncio.run(app.feed("u1", 10, first["next_cursor"], "mobile")))
    session = first["items"] + second["items"]
    positions = [i["position"] for i in session if i["type"] == "ad"]
    assert positions, "an eligible ad with a strong pCTR is shown"
    assert sum(p < 5 for p in positions) <= 1, "at most one ad in the first screen"
    assert all(b - a >= AdsConfig().ab_buckets[first["ab_bucket"]] for a, b in zip(positions, positions[1:]))
    by_pos = {i["position"]: i["type"] for i in session}
    for p in positions:
        assert "ad" not in (by_pos.get(p - 1), by_pos.get(p + 1)) and "product" not in (by_pos.get(p - 1), by_pos.get(p + 1))
    for ad in ad_items(first) + ad_items(second):
        assert AdsConfig().floor_cpc <= ad["ad"]["price_cpc"] <= ad["ad"]["bid_cpc"]
        assert app.catalogue.kind[ad["id"]] == ItemKind.AD
    assert len({i["id"] for i in session}) == len(session) == 20
    assert rec.ad_rows and rec.ad_rows[0] > 0, "the eligible ads' features went to Triton with the request"


def test_frequency_caps_hold_across_feeds():
    app, store, rec, ad_store = ads_app()
    shown: dict[int, int] = {}
    for _ in range(12):
        for ad in ad_items(data_of(asyncio.run(app.feed("u1", 10, None, "mobile")))):
            shown[ad["ad"]["campaign"]] = shown.get(ad["ad"]["campaign"], 0) + 1
    assert shown and max(shown.values()) <= 2, shown


def test_ads_fail_closed_when_redis_is_down_and_the_feed_still_answers():
    app, store, rec, ad_store = ads_app()
    ad_store.down = True
    page = data_of(asyncio.run(app.feed("u1", 10, None, "mobile")))
    assert len(page["items"]) == 10 and not ad_items(page)
    assert "ads_unavailable" in page["degraded"]


def test_a_missing_pctr_serves_no_ads():
    app, store, rec, ad_store = ads_app()
    rec.pctr = None
    page = data_of(asyncio.run(app.feed("u1", 10, None, "mobile")))
    assert len(page["items"]) == 10 and not ad_items(page) and "ads_unavailable" in page["degraded"]


def test_an_ad_refused_by_the_atomic_cap_gives_its_place_to_content():
    app, store, rec, ad_store = ads_app()
    ad_store.refuse_all = True
    page = data_of(asyncio.run(app.feed("u1", 10, None, "mobile")))
    assert len(page["items"]) == 10 and not ad_items(page)
    assert [i["position"] for i in page["items"]] == list(range(10))


def click_of(app, page: dict) -> Event:
    ad = ad_items(page)[0]
    return Event(type="click", item_id=ad["id"], event_token=ad["tracking"]["event_token"], timestamp=1.7e9)


def test_an_ad_click_is_charged_its_signed_price_once():
    app, store, rec, ad_store = ads_app()
    page = data_of(asyncio.run(app.feed("u1", 10, None, "mobile")))
    click = click_of(app, page)
    price = ad_items(page)[0]["ad"]["price_cpc"]
    first = data_of(asyncio.run(app.events("u1", [click], None)))
    again = data_of(asyncio.run(app.events("u1", [click, click], None)))
    assert first["ad_clicks_charged"] == 1 and again["ad_clicks"] == 1, "one click per token, even twice in one batch"
    assert sum(ad_store.spend.values()) == pytest.approx(price, abs=1e-6), "charged once, at the price signed at serve time"


def test_a_click_is_not_acknowledged_when_the_charge_fails():
    app, store, rec, ad_store = ads_app()
    page = data_of(asyncio.run(app.feed("u1", 10, None, "mobile")))
    ad_store.down = True
    with pytest.raises(FeedError) as e:
        asyncio.run(app.events("u1", [click_of(app, page)], "k1"))
    assert e.value.kind == ErrorKind.UNAVAILABLE and not store.applied, "nothing of the batch is stored"
    ad_store.down = False
    done = data_of(asyncio.run(app.events("u1", [click_of(app, page)], "k1")))
    assert done["ad_clicks_charged"] == 1 and len(store.applied) == 1


def test_the_requested_bucket_picks_the_ad_load_and_a_bad_one_is_refused():
    app, store, rec, ad_store = ads_app(AdsConfig(ab_buckets=(0, 5)))
    off = data_of(asyncio.run(app.feed("u1", 10, None, "mobile", "0")))
    assert off["ab_bucket"] == 0 and not ad_items(off), "bucket 0 has no ad load"
    on = data_of(asyncio.run(app.feed("u2", 10, None, "mobile", "1")))
    assert on["ab_bucket"] == 1 and ad_items(on)
    named = {data_of(asyncio.run(app.feed(u, 10, None, "mobile", "arm-b")))["ab_bucket"] for u in ("u1", "u2", "u3")}
    assert len(named) == 1, "a named arm is one bucket for every user"
    with pytest.raises(FeedError) as e:
        asyncio.run(app.feed("u1", 10, None, "mobile", "7"))
    assert e.value.kind == ErrorKind.VALIDATION and "ab_bucket" in e.value.msg
