"""Deploy warm-up through the real stack (``bentoml serve`` -> Triton on a published `tiny` run,
redis-server): the feed records the users it serves in the recently-active index; a second
``recommend`` version published into the running Triton is held out of routing until the feed
has built its encoder states for those users, and then those users are cache hits on it
(``genrec_encoder_cache_*`` on Triton's metrics port, by model version)."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest
import redis

from genrec.exporters.publish import publish_run, version_numbers
from genrec.feed.event_store import ACTIVE_SHARDS, EventStore, active_key
from genrec.runtime.triton_server import metrics_settle_s, scrape_metrics
from tests.integration.feed_stack import feed_env, seed_users

pytestmark = pytest.mark.integration
pytest.importorskip("tritonclient.grpc")
pytest.importorskip("bentoml")
WARMED = [f"u{i}" for i in range(1, 31)]  # seeded users with histories, fed once before the deploy
WARM_RATE = 5.0  # so the warm-up of 30 users takes ~6 s and the hold can be watched


@pytest.fixture(scope="module")
def service(tiny_run, repository, triton, own_redis, feed_service):
    seed_users(tiny_run, own_redis.url)
    return feed_service(
        **feed_env(tiny_run, repository, triton, own_redis),
        GENREC_FEED__VERSIONS_REFRESH_S="1",
        GENREC_FEED__WARM_USERS="100",
        GENREC_FEED__WARM_RATE_PER_S=str(WARM_RATE),
        GENREC_FEED__WARM_BUDGET_S="120",
        GENREC_FEED__ACTIVE_USERS_CAP="1000",
    )


@pytest.fixture(scope="module")
def http(service):
    with httpx.Client(base_url=service.url, timeout=20) as c:
        yield c


def feed(http, user: str) -> dict:
    r = http.post("/v1/feed", json={"user_id": user, "count": 5})
    assert r.status_code == 200, r.text
    return r.json()["data"]


def recently_active(url: str, limit: int, touch: str | None = None) -> list[str]:
    async def read() -> list[str]:
        store = EventStore(url, 1.0, 4096, 1000, 1000, 3600, active_users_cap=1000)
        try:
            if touch is not None:
                await store.user_state(touch, 10, 3, 10, mark_active=False)
            return await store.recently_active(limit)
        finally:
            await store.close()

    return asyncio.run(read())


def feed_metric(http, name: str, labels: str) -> float:
    m = re.search(rf"^{name}\{{{labels}\}} (\S+)$", http.get("/metrics").text, re.M)
    return float(m[1]) if m else 0.0


def cache_counts(triton, version: str) -> tuple[float, float]:
    text = scrape_metrics(triton.metrics_url, metrics_settle_s())  # every request so far counted
    out = []
    for kind in ("hits", "misses"):
        out.append(
            sum(
                float(v)
                for v in re.findall(rf'^genrec_encoder_cache_{kind}_total\{{[^}}]*model_version="{version}"[^}}]*\}} (\S+)$', text, re.M)
            )
        )
    return out[0], out[1]


def test_served_users_are_indexed_most_recent_first_and_a_warm_up_read_is_not_a_visit(http, own_redis):
    for u in WARMED:
        assert feed(http, u)["model_version"] == "1"
    time.sleep(1.2)
    feed(http, "u0")  # the visits are written by a background flush, at most every second: this one is due
    time.sleep(0.5)
    assert recently_active(own_redis.url, 5) == ["u0", *WARMED[::-1][:4]]
    assert recently_active(own_redis.url, 1, touch="u999") == ["u0"], "mark_active=False leaves the index alone"
    r = redis.Redis.from_url(own_redis.url)
    sizes = [r.zcard(active_key(k)) for k in range(ACTIVE_SHARDS)]
    assert sum(sizes) == len(WARMED) + 1 and sum(s > 0 for s in sizes) > 4, "spread over the shard keys"


def test_a_published_version_is_held_until_warmed_and_warmed_users_are_cache_hits(http, tiny_run, repository, triton):
    """After the first test (the warmed users are in the index). Publishes version 2 into the
    running Triton, as `genrec-publish --triton-url` does."""
    publish_run(tiny_run, repository, triton.http_url, progress=lambda m: None)
    assert version_numbers(repository / "recommend")[-2:] == [1, 2]
    held_pages, deadline = 0, time.monotonic() + 90
    while True:  # a page served before the warm-up is seen finished must come from version 1
        page = feed(http, f"probe-{held_pages}")
        done = feed_metric(http, "feed_warmup_runs_total", 'outcome="done"')
        if done:
            break
        assert page["model_version"] == "1", "the new version serves nobody while it is warmed"
        held_pages += 1
        assert time.monotonic() < deadline, "the warm-up did not finish"
        time.sleep(0.2)
    assert held_pages >= 3, f"the hold lasted {held_pages} probes: too short to have been watched"
    assert feed_metric(http, "feed_warmup_users_total", 'outcome="warmed"') == len(WARMED) + 1, "u1..u30 and u0"
    assert feed_metric(http, "feed_warmup_users_total", 'outcome="failed"') == 0
    hits0, misses0 = cache_counts(triton, "2")
    assert misses0 >= len(WARMED), "the warm-up built each warmed user's state on version 2 (a miss each)"
    pages = [feed(http, u) for u in WARMED]
    assert {p["model_version"] for p in pages} == {"2"}, "released: the canary split (share 1) puts everyone on 2"
    hits1, misses1 = cache_counts(triton, "2")
    assert (hits1 - hits0, misses1 - misses0) == (len(WARMED), 0), "every warmed user is a cache hit on the new version"
