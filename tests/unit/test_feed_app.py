"""``FeedApp`` (what each route does) with in-memory fakes of the store and the recommender:
page replay, exclusions across pages, fallback, a store that is down, idempotent events. The
same class runs against Redis and Triton in tests/integration/test_feed_service.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest

from genrec.feed.catalogue import FeedCatalogue
from genrec.feed.cursor import CursorCodec
from genrec.feed.envelope import ErrorKind, FeedError
from genrec.feed.events import BatchPlan, Event
from genrec.feed.handlers import FeedApp
from genrec.feed.history import History
from genrec.feed.ports import BatchResult, RecommendFailed, StoreUnavailable, UserState
from genrec.feed.tokens import EventTokens
from genrec.settings import FeedConfig

N_ITEMS = 200
KEY = "unit-test-key"


class FakeStore:
    def __init__(self) -> None:
        self.pages: dict[tuple[str, str, int], bytes] = {}
        self.records: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
        self.applied: list[BatchPlan] = []
        self.negatives: list[int] = []
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("down")

    async def ping(self) -> bool:
        self._check()
        return True

    async def user_state(self, user_id: str, n_items: int, n_devices: int, max_negatives: int) -> UserState:
        self._check()
        h = History(np.array([1, 2, 3]), np.array([0, 1, 0]), np.array([1.7e9, 1.7e9 + 1, 1.7e9 + 2]), np.array([0, 0, 0]))
        return UserState(h, list(self.negatives), 0)

    async def get_page(self, user_id: str, session_id: str, page: int) -> bytes | None:
        self._check()
        return self.pages.get((user_id, session_id, page))

    async def put_page(self, user_id: str, session_id: str, page: int, body: bytes, ttl_s: int) -> bytes:
        self._check()
        return self.pages.setdefault((user_id, session_id, page), body)  # the first writer wins

    async def recorded_batch(self, user_id: str, idempotency_key: str, body_hash: str) -> BatchResult | None:
        self._check()
        if (user_id, idempotency_key) not in self.records:
            return None
        digest, answer = self.records[(user_id, idempotency_key)]
        return BatchResult("replay", answer) if digest == body_hash else BatchResult("conflict", None)

    async def apply_batch(self, user_id: str, idempotency_key: str | None, body_hash: str, plan: BatchPlan, now: float) -> BatchResult:
        self._check()
        if idempotency_key is not None and (found := await self.recorded_batch(user_id, idempotency_key, body_hash)):
            return found
        self.applied.append(plan)
        if idempotency_key is not None:
            self.records[(user_id, idempotency_key)] = (body_hash, plan.answer())
        return BatchResult("applied", plan.answer())


class FakeRecommender:
    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.fail: str | None = None
        self.ad_rows: list[int] = []
        self.pctr: float | None = 0.05  # None: the pCTR part failed

    async def ready(self) -> bool:
        return self.fail is None

    async def recommend(self, user_id, h, segment, device, excluded, top_k, version=""):
        self.calls.append(list(excluded))
        if self.fail:
            raise RecommendFailed(self.fail, "fake", 0.001)
        ranked = [i for i in range(N_ITEMS) if i not in set(excluded)][:top_k]
        return [(i, 1.0 - i / N_ITEMS) for i in ranked], 0.002

    async def recommend_with_ads(
        self, user_id, h, segment, device, excluded, top_k, ad_features, version="", ensemble=True, ad_ctr_version=""
    ):
        candidates, seconds = await self.recommend(user_id, h, segment, device, excluded, top_k, version)
        self.ad_rows.append(len(ad_features))
        return candidates, None if self.pctr is None else np.full(len(ad_features), self.pctr), seconds


def make_app() -> tuple[FeedApp, FakeStore, FakeRecommender]:
    rng = np.random.default_rng(0)
    kind = np.zeros(N_ITEMS, np.int64)
    kind[::7] = 1  # ads
    kind[3::11] = 2  # products
    catalogue = FeedCatalogue(
        rng.integers(0, 5, N_ITEMS),
        rng.integers(0, 9, N_ITEMS),
        kind,
        rng.random(N_ITEMS),
        rng.normal(size=(N_ITEMS, 8)).astype(np.float32),
    )
    cfg = FeedConfig()
    store, rec = FakeStore(), FakeRecommender()
    app = FeedApp(cfg, catalogue, 3, 1000, store, rec, CursorCodec(KEY, 1800, 500), EventTokens(KEY, 3600))
    return app, store, rec


def data_of(answer) -> dict[str, Any]:
    return json.loads(answer.data) if isinstance(answer.data, bytes) else answer.data


def test_pages_replay_byte_for_byte_and_never_repeat_an_item():
    app, store, rec = make_app()
    first = data_of(asyncio.run(app.feed("u1", 10, None, "mobile")))
    second = asyncio.run(app.feed("u1", 10, first["next_cursor"], "mobile"))
    again = asyncio.run(app.feed("u1", 10, first["next_cursor"], "mobile"))
    assert isinstance(second.data, bytes), "a page after the first is stored when it is served"
    assert again.data == second.data
    assert again.headers.get("x-feed-replayed") == "1"
    assert len(rec.calls) == 2, "a replayed page must not ask the recommender again"
    ids = [i["id"] for i in first["items"]] + [i["id"] for i in data_of(second)["items"]]
    assert len(ids) == len(set(ids)) == 20
    assert set(rec.calls[1]) >= {i["id"] for i in first["items"]}, "served items go to Triton as excluded_items"
    assert not any(app.catalogue.kind[i] == 1 for i in ids), "ads are never organic"


def test_negatives_are_excluded_and_a_failing_recommender_gives_the_fallback():
    app, store, rec = make_app()
    store.negatives = [0, 1, 2]
    rec.fail = "unavailable"
    data = data_of(asyncio.run(app.feed("u1", 10, None, "mobile")))
    assert data["fallback"] and data["fallback_reason"] == "triton_unavailable" and len(data["items"]) == 10
    assert set(rec.calls[0]) >= {0, 1, 2}
    assert not {0, 1, 2} & {i["id"] for i in data["items"]}


def test_a_store_that_is_down_degrades_the_feed_and_refuses_events():
    app, store, rec = make_app()
    page = data_of(asyncio.run(app.feed("u1", 5, None, "mobile")))
    store.down = True
    degraded = data_of(asyncio.run(app.feed("u1", 5, None, "mobile")))
    assert degraded["degraded"] == ["history_unavailable"] and len(degraded["items"]) == 5
    ev = Event(type="click", item_id=page["items"][0]["id"], event_token=page["items"][0]["tracking"]["event_token"], timestamp=1.7e9)
    with pytest.raises(FeedError) as e:
        asyncio.run(app.events("u1", [ev], "k1"))
    assert e.value.kind is ErrorKind.UNAVAILABLE and "same Idempotency-Key" in e.value.msg
    assert not store.applied


def test_events_with_a_key_apply_once_and_a_replay_needs_no_revalidation():
    app, store, rec = make_app()
    page = data_of(asyncio.run(app.feed("u1", 5, None, "mobile")))
    item = page["items"][0]
    ev = Event(type="click", item_id=item["id"], event_token=item["tracking"]["event_token"], timestamp=1.7e9)
    first = asyncio.run(app.events("u1", [ev], "k1"))
    app.tokens = EventTokens("another-key", 3600)  # the token would no longer verify...
    replay = asyncio.run(app.events("u1", [ev], "k1"))  # ...but the recorded answer comes back
    assert replay.data == first.data and replay.headers == {"idempotent-replayed": "true"}
    assert len(store.applied) == 1
    other = Event(type="like", item_id=item["id"], event_token=item["tracking"]["event_token"], timestamp=1.7e9)
    with pytest.raises(FeedError) as e:
        asyncio.run(app.events("u1", [other], "k1"))
    assert e.value.kind is ErrorKind.IDEMPOTENCY_CONFLICT
