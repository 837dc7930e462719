"""The demo's walk through the feed API (``genrec-stack demo``): ask for a returning user's feed,
print it as a table, post a click with the event token the feed gave, ask again and show what
changed, then a few metric lines. Plain HTTP through urllib: what any client would send."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

TITLE_FIELDS = ("title", "name", "headline")
EXTRA_FIELDS = ("category", "author", "brand", "price", "popularity")
METRIC_PREFIXES = (
    "feed_http_requests_total",
    "feed_items_served_total",
    "feed_events_total",
    "feed_fallbacks_total",
    "feed_triton_request_duration_seconds_count",
    "feed_ad_auctions_total",
    "feed_ads_served_total",
    "feed_ad_clicks_total",
    "feed_ad_revenue_total",
)


def say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def call(base: str, method: str, path: str, body: dict | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict, dict]:
    """(HTTP status, JSON body, response headers)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}"), dict(r.headers)
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw), dict(e.headers)
        except ValueError:
            return e.code, {"msg": raw.decode(errors="replace")[:300]}, dict(e.headers)


def default_user(run: Path) -> str:
    """A user the stack seeded (a returning user with a real history)."""
    from genrec.feed.seed import user_id_of

    return user_id_of(0)


def feed(base: str, user: str, count: int) -> dict:
    rid = f"demo-{uuid.uuid4().hex[:12]}"
    status, body, _ = call(
        base, "POST", "/v1/feed", {"user_id": user, "count": count, "scene": "home", "device": "mobile"}, {"X-Request-ID": rid}
    )
    if status != 200 or body.get("code") != 0 or "data" not in body:
        raise RuntimeError(f"/v1/feed answered HTTP {status}: {body}")
    return body


def print_feed(body: dict) -> None:
    data = body["data"]
    items = data.get("items", [])
    kinds = {k: sum(1 for i in items if i.get("type") == k) for k in ("content", "product", "ad")}
    say(
        f"request_id {body.get('request_id')}  fallback={data.get('fallback')}  {len(items)} items "
        f"({kinds['content']} content, {kinds['product']} products, {kinds['ad']} ads)  ab_bucket={data.get('ab_bucket')}"
    )
    print(f"  {'pos':>3}  {'type':8} {'id':>7} {'score':>8}  {'title':44} reason")
    for it in items:
        it = {**it, **(it.get("display") or {})}  # display fields sit under "display" (or beside the item)
        title = next((str(it[f]) for f in TITLE_FIELDS if it.get(f) not in (None, "")), "")
        if not title:
            title = ", ".join(f"{f}={it[f]}" for f in EXTRA_FIELDS if it.get(f) not in (None, ""))
        score = it.get("score")
        score_s = f"{score:8.3f}" if isinstance(score, int | float) else f"{'':8}"
        reason = it.get("reason", "")
        if isinstance(it.get("ad"), dict):  # an ad: what the auction decided
            ad = it["ad"]
            reason = f"{reason}: CPC {ad['price_cpc']:.3f} (bid {ad['bid_cpc']:.2f}, pCTR {ad['pctr']:.4f}, eCPM {ad['ecpm']:.2f})"
        print(f"  {it.get('position', ''):>3}  {it.get('type', ''):8} {it.get('id', ''):>7} {score_s}  {title[:44]:44} {reason}")
    if data.get("fallback"):
        say(f"note: a FALLBACK feed (popular items), reason {data.get('fallback_reason')}: see the feed log")


def run_demo(base: str, run: Path, user: str | None = None, count: int = 10, triton_metrics: str = "") -> None:
    user = user or default_user(run)
    say(f"POST {base}/v1/feed  user_id={user} count={count}")
    first = feed(base, user, count)
    print_feed(first)
    items = first["data"].get("items", [])
    if not items:
        say("the feed is empty: nothing to click")
        return
    ads = [i for i in items if i.get("type") == "ad"]
    clicked = ads[0] if ads else items[0]  # an ad if the page has one: its click is charged its auction price
    token = (clicked.get("tracking") or {}).get("event_token", "")
    event = {"type": "click", "item_id": clicked["id"], "event_token": token, "timestamp": int(time.time())}
    say(f"POST {base}/v1/events  click on item {clicked['id']} (position {clicked.get('position')}) with its event_token")
    status, body, _ = call(base, "POST", "/v1/events", {"user_id": user, "events": [event]}, {"Idempotency-Key": uuid.uuid4().hex})
    say(f"-> HTTP {status} {json.dumps(body)[:200]}")
    if status != 200:
        raise RuntimeError(f"/v1/events answered HTTP {status}: {body}")

    say(f"POST {base}/v1/feed  the same user again, after the click")
    second = feed(base, user, count)
    print_feed(second)
    before = [(i.get("type"), i.get("id")) for i in items]
    after = [(i.get("type"), i.get("id")) for i in second["data"].get("items", [])]
    new = [i for i in after if i not in before]
    gone = [i for i in before if i not in after]
    if before == after:
        say("the next feed is the same as the first one")
    else:
        say(f"the next feed changed: {len(new)} new items {[i for _, i in new]}, {len(gone)} gone {[i for _, i in gone]}")

    for url, prefixes in ((f"{base}/metrics", METRIC_PREFIXES), (triton_metrics, ("genrec_encoder_cache_",))):
        if not url:
            continue
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                lines = [ln for ln in r.read().decode().splitlines() if ln.startswith(prefixes) and not ln.endswith(" 0.0")]
        except OSError as e:
            say(f"{url}: {e}")
            continue
        say(f"{url} (a few lines):")
        for ln in lines[:8]:
            print(f"  {ln}")
