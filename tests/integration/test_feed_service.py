"""The feed service on the real processes: ``bentoml serve`` -> Triton (recommend on a published
`tiny` run) -> redis-server, seeded with ``genrec-feed-seed``. One service is shared by the
module; the failure tests (Triton stalled, Redis stopped) run last and restore what they break."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import pytest

from genrec.feed.history import unpack
from genrec.runtime.redis_server import RedisServer
from tests.integration.feed_stack import SEEDED_USERS, feed_env, seed_users

pytestmark = pytest.mark.integration
pytest.importorskip("tritonclient.grpc")
pytest.importorskip("bentoml")
redis = pytest.importorskip("redis")
TRITON_TIMEOUT_S = 1.5


@pytest.fixture(scope="module")
def service(tiny_run, repository, triton, own_redis, feed_service):
    first = seed_users(tiny_run, own_redis.url)
    assert f"{SEEDED_USERS} written" in first
    assert f"{SEEDED_USERS} already seeded" in seed_users(tiny_run, own_redis.url)  # idempotent re-run
    return feed_service(
        **feed_env(
            tiny_run,
            repository,
            triton,
            own_redis,
            triton_timeout_s=TRITON_TIMEOUT_S,
            GENREC_ADS__ENABLED="false",  # the organic feed alone here; ads: tests/integration/test_feed_ads.py
        )
    )


@pytest.fixture(scope="module")
def http(service):
    with httpx.Client(base_url=service.url, timeout=15) as c:
        yield c


@pytest.fixture(scope="module")
def rdb(own_redis):
    return redis.Redis.from_url(own_redis.url)


def feed(http, user="u1", **body):
    r = http.post("/v1/feed", json={"user_id": user, **body})
    assert r.status_code == 200, r.text
    env = r.json()
    assert env["code"] == 0 and env["msg"] == "" and env["request_id"] == r.headers["x-request-id"]
    return env["data"], r


def post_events(http, user, events, key=None):
    headers = {"Idempotency-Key": key} if key else {}
    return http.post("/v1/events", json={"user_id": user, "events": events}, headers=headers)


def event(item, type_="click", **kw):
    return {"type": type_, "item_id": item["id"], "event_token": item["tracking"]["event_token"], "timestamp": time.time() - 1, **kw}


def assert_error(r, status):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert body["code"] != 0 and body["msg"] and body["data"] is None
    assert body["request_id"] == r.headers["x-request-id"]
    return body


def test_personalised_feed_for_a_seeded_user(http):
    data, r = feed(http, "u1", count=12, scene="home", device="desktop", geo="DE", ab_bucket="b")
    assert not data["fallback"] and not data["cold_start"] and data["degraded"] == []
    items = data["items"]
    assert len(items) == 12 and [i["position"] for i in items] == list(range(12))
    assert len({i["id"] for i in items}) == 12
    assert {i["type"] for i in items} <= {"content", "product", "ad"}
    products = [i["position"] for i in items if i["type"] == "product"]
    assert all(b - a >= 4 for a, b in zip(products, products[1:]))
    for i in items:
        assert i["reason"] and i["display"]["title"] and i["display"]["kind"] == i["type"]
        assert i["tracking"]["event_token"] and i["tracking"]["trace_id"] == r.headers["x-request-id"]
    assert 0 < float(r.headers["x-triton-ms"]) < 2000  # the recommend call's share of this request
    _, r2 = feed(http, "u1", count=1)
    assert r2.headers["x-request-id"] != r.headers["x-request-id"]
    r3 = http.post("/v1/feed", json={"user_id": "u1"}, headers={"X-Request-ID": "caller-id-1"})
    assert r3.headers["x-request-id"] == "caller-id-1" and r3.json()["request_id"] == "caller-id-1"
    assert len(r3.json()["data"]["items"]) == 10  # default count


def test_cold_start_for_an_unknown_user(http):
    data, _ = feed(http, "never-seen-user", count=5)
    assert data["cold_start"] and not data["fallback"] and len(data["items"]) == 5


def test_paging_replays_and_never_repeats(http):
    first, _ = feed(http, "u2", count=8)
    seen = [i["id"] for i in first["items"]]
    cursor = first["next_cursor"]
    for page in range(1, 4):
        r1 = http.post("/v1/feed", json={"user_id": "u2", "count": 8, "cursor": cursor})
        r2 = http.post("/v1/feed", json={"user_id": "u2", "count": 8, "cursor": cursor})
        assert r1.status_code == r2.status_code == 200
        d1, d2 = r1.json()["data"], r2.json()["data"]
        assert json.dumps(d1) == json.dumps(d2), "the same cursor must replay the same page"
        page_bytes = [r.content.split(b',"msg":', 1)[0] for r in (r1, r2)]  # {"code":0,"data":<the page>
        assert page_bytes[0] == page_bytes[1], "a replay must be byte for byte the page first served"
        assert d1["page"] == page and d1["items"][0]["position"] == len(seen)
        seen += [i["id"] for i in d1["items"]]
        cursor = d1["next_cursor"]
    assert len(seen) == len(set(seen)), "an item served twice in one session"
    tampered = cursor[:-3] + ("AAA" if cursor[-3:] != "AAA" else "BBB")
    assert "cursor" in assert_error(http.post("/v1/feed", json={"user_id": "u2", "cursor": tampered}), 400)["msg"]
    assert "another user" in assert_error(http.post("/v1/feed", json={"user_id": "u3", "cursor": cursor}), 400)["msg"]
    assert_error(http.post("/v1/feed", json={"user_id": "u2", "cursor": "garbage"}), 400)


def test_events_are_idempotent_and_conflicts_are_409(http, rdb):
    data, _ = feed(http, "u4", count=3)
    items = data["items"]
    before = rdb.llen("feed:{u:u4}:h")
    body = [event(items[0]), event(items[1], "dwell", dwell_ms=2000), event(items[2], "impression")]
    r1 = post_events(http, "u4", body, key="k-1")
    assert r1.status_code == 200, r1.text
    assert r1.json()["data"] == {"accepted": 3, "history_appended": 2, "impressions": 1, "likes": 0, "negatives": 0}
    r2 = post_events(http, "u4", body, key="k-1")
    assert r2.status_code == 200 and r2.json()["data"] == r1.json()["data"] and r2.headers["idempotent-replayed"] == "true"
    assert rdb.llen("feed:{u:u4}:h") == before + 2, "a replay must be applied once"
    assert_error(post_events(http, "u4", body[:1], key="k-1"), 409)
    assert rdb.llen("feed:{u:u4}:h") == before + 2


def test_next_feed_reflects_clicks_and_hides(http, rdb):
    data, _ = feed(http, "u5", count=10)
    items = data["items"]
    hidden, clicked = items[0], items[1:4]
    r = post_events(http, "u5", [event(hidden, "hide")] + [event(i, "click") for i in clicked] + [event(items[4], "like")], key="k-2")
    assert r.status_code == 200, r.text
    h = unpack(rdb.lrange("feed:{u:u5}:h", 0, -1), 10**9, 3)
    assert h.items[-4:].tolist() == [i["id"] for i in clicked] + [items[4]["id"]]
    assert rdb.zscore("feed:{u:u5}:neg", hidden["id"]) is not None and rdb.zscore("feed:{u:u5}:likes", items[4]["id"]) is not None
    after, _ = feed(http, "u5", count=10)
    ids = [i["id"] for i in after["items"]]
    assert hidden["id"] not in ids
    assert ids != [i["id"] for i in items], "the new clicks should change the feed"
    similar = http.get(f"/v1/items/{items[5]['id']}/similar", params={"k": 20, "user_id": "u5"}).json()["data"]["items"]
    assert hidden["id"] not in [s["id"] for s in similar]


def test_item_routes(http):
    data, _ = feed(http, "u6", count=2)
    item = data["items"][0]
    r = http.get(f"/v1/items/{item['id']}")
    assert r.status_code == 200 and r.json()["data"]["display"] == item["display"]
    sim = http.get(f"/v1/items/{item['id']}/similar", params={"k": 5}).json()["data"]
    assert len(sim["items"]) == 5 and item["id"] not in [s["id"] for s in sim["items"]]
    assert_error(http.get("/v1/items/999999999"), 404)
    assert_error(http.get("/v1/items/abc"), 404)
    assert_error(http.get(f"/v1/items/{item['id']}/similar", params={"k": 0}), 422)
    assert_error(http.get("/v1/nothing-here"), 404)


@pytest.mark.parametrize(
    "body, status",
    [
        ({"count": 3}, 422),  # missing user_id
        ({"user_id": "u1", "count": 0}, 422),
        ({"user_id": "u1", "count": 51}, 422),
        ({"user_id": "u1", "count": "ten"}, 422),
        ({"user_id": 12}, 422),
        ({"user_id": "u1", "device": "toaster"}, 422),
        ({"user_id": "bad id with spaces"}, 422),
        ({"user_id": "u1", "cursor": 7}, 422),
    ],
)
def test_bad_feed_requests(http, body, status):
    assert_error(http.post("/v1/feed", json=body), status)


def test_bad_event_requests(http):
    data, _ = feed(http, "u7", count=1)
    item = data["items"][0]
    ok = event(item)
    cases = [
        ({"user_id": "u7", "events": [{**ok, "type": "share"}]}, 422),  # unknown event type
        ({"user_id": "u7", "events": [{**ok, "item_id": 10**9}]}, 422),  # unknown item
        ({"user_id": "u7", "events": [{**ok, "event_token": "forged.token"}]}, 400),
        ({"user_id": "u8", "events": [ok]}, 400),  # another user's token
        ({"user_id": "u7", "events": []}, 422),
        ({"user_id": "u7", "events": [ok] * 101}, 422),  # over the batch cap
        ({"user_id": "u7", "events": [{**ok, "type": "dwell"}]}, 422),  # dwell without dwell_ms
        ({"user_id": "u7", "events": "click"}, 422),
    ]
    for body, status in cases:
        assert_error(http.post("/v1/events", json=body), status)
    assert_error(http.post("/v1/events", json={"user_id": "u7", "events": [ok]}, headers={"Idempotency-Key": "bad key!"}), 400)


def test_malformed_oversized_and_wrong_content_type(http):
    assert_error(http.post("/v1/feed", content=b'{"user_id": "u1",', headers={"content-type": "application/json"}), 400)
    assert_error(http.post("/v1/feed", content=b"[1, 2]", headers={"content-type": "application/json"}), 422)
    assert_error(http.post("/v1/feed", content=b"user_id=u1", headers={"content-type": "text/plain"}), 415)
    big = json.dumps({"user_id": "u1", "geo": "x" * 70_000}).encode()
    assert_error(http.post("/v1/feed", content=big, headers={"content-type": "application/json"}), 413)

    def chunks():  # no Content-Length: the cap is counted while reading
        for _ in range(20):
            yield b" " * 5000

    assert_error(http.post("/v1/events", content=chunks(), headers={"content-type": "application/json"}), 413)


def test_fuzz_with_schemathesis_then_bounded_metrics(service, http):
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(service.url + "/docs.json")
    statuses: list[int] = []
    server_errors: list[str] = []
    per_op = {"/v1/feed": 320, "/v1/events": 280}
    for result in schema.get_all_operations():
        op = result.ok()
        if op.path not in per_op:
            continue

        @settings(max_examples=per_op[op.path], deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def call(case):
            r = case.call(base_url=service.url, timeout=15)
            statuses.append(r.status_code)
            if r.status_code >= 500:
                server_errors.append(f"{case.method} {case.path} {case.body!r:.300} -> {r.status_code} {r.text[:300]}")

        call()
    generated = len(statuses)
    # a few raw paths that BentoML's own metrics would label one series each
    for i in range(60):
        statuses.append(http.get(f"/v1/items/{i * 7919}").status_code)
        statuses.append(http.get(f"/v1/items/x{i}/similar").status_code)
        statuses.append(http.get(f"/random/{i}").status_code)
    print(f"\nfuzz: {generated} schemathesis-generated requests (+{len(statuses) - generated} raw paths), statuses {sorted(set(statuses))}")
    assert generated >= 500, f"schemathesis generated only {generated} requests"
    assert not server_errors, server_errors[:5]
    feed(http, "u1", count=3)  # still serving

    text = http.get("/metrics").text
    series = [line for line in text.splitlines() if line and not line.startswith("#")]
    print(f"metrics: {len(series)} series after the fuzz run")
    assert len(series) < 600
    assert not [s for s in series if "/v1/items/" in s and "{id}" not in s], "a raw path became a label value"
    assert not [s for s in series if "/random/" in s]
    assert any('route="other"' in s and 'status="404"' in s for s in series), "unknown-route 404s must still be counted"
    for name in (
        "feed_http_requests_total",
        "feed_http_request_duration_seconds_bucket",
        "feed_triton_request_duration_seconds_bucket",
        "feed_items_served_total",
        "feed_events_total",
    ):
        assert any(s.startswith(name) for s in series), name


def test_triton_stalled_serves_the_fallback_within_its_deadline(http, triton):
    os.killpg(triton.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        data, _ = feed(http, "u9", count=10)
        took = time.monotonic() - t0
        assert data["fallback"] and data["fallback_reason"].startswith("triton_") and len(data["items"]) == 10
        assert took < TRITON_TIMEOUT_S + 2.0
        assert http.get("/readyz").status_code == 503
    finally:
        os.killpg(triton.proc.pid, signal.SIGCONT)
    deadline = time.monotonic() + 30
    while http.get("/readyz").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    data, _ = feed(http, "u9", count=10)
    assert not data["fallback"]
    assert 'feed_fallbacks_total{reason="triton_' in http.get("/metrics").text


def test_redis_down_feed_served_events_503_then_recovery(http, own_redis):
    data, _ = feed(http, "u10", count=3)
    own_redis.stop()
    try:
        down, _ = feed(http, "u10", count=3)
        assert down["degraded"] == ["history_unavailable"] and len(down["items"]) == 3
        r = post_events(http, "u10", [event(data["items"][0])], key="k-down")
        assert_error(r, 503)
        assert http.get("/readyz").status_code == 503
    finally:
        own_redis.proc = RedisServer(port=own_redis.port, maxmemory="64mb").start().proc  # the fixture stops it
    r = post_events(http, "u10", [event(data["items"][0])], key="k-down")
    assert r.status_code == 200, r.text
    back, _ = feed(http, "u10", count=3)
    assert back["degraded"] == []
    assert http.get("/readyz").status_code == 200


def test_triton_killed_serves_the_fallback_then_recovers_on_the_same_channel(http, triton):
    """Down, not slow: UNAVAILABLE on the service's one gRPC channel, then the same channel must
    reconnect to the restarted server (gRPC's reconnect backoff must not keep the fallback on)."""
    triton.stop()
    t0 = time.monotonic()
    data, _ = feed(http, "u11", count=5)
    assert data["fallback"] and data["fallback_reason"] == "triton_unavailable" and len(data["items"]) == 5
    assert time.monotonic() - t0 < TRITON_TIMEOUT_S + 2.0
    assert http.get("/readyz").status_code == 503
    triton.start(timeout=240)  # same ports
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        data, _ = feed(http, "u11", count=5)
        if not data["fallback"]:
            break
        time.sleep(1.0)
    assert not data["fallback"], "the feed kept serving fallbacks after Triton came back"
    assert http.get("/readyz").status_code == 200
