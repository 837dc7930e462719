"""The feed service's Prometheus metrics. Every label value is bounded: route templates from
``ROUTES`` (anything else is ``other``), outcomes and types from fixed sets; never a raw path,
a user id or an item id. BentoML's own request series label the raw path, so the exposition
is filtered (``bounded_exposition``) before it is served; BentoML still keeps those series in
its registry (one per distinct path seen; BentoML ties them to ``/metrics`` itself, so they
cannot be turned off alone)."""

from __future__ import annotations

import re

import bentoml

ROUTES = ("/v1/feed", "/v1/events", "/v1/items/{id}", "/v1/items/{id}/similar", "/livez", "/readyz", "/metrics", "/docs.json", "/")
_ITEM = re.compile(r"^/v1/items/[^/]+$")
_SIMILAR = re.compile(r"^/v1/items/[^/]+/similar$")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


OTHER = "other"  # every path that is not a route: 404s and scanners still count, as one series


def route_template(path: str) -> str:
    if path in ROUTES:
        return path
    if _SIMILAR.match(path):
        return "/v1/items/{id}/similar"
    if _ITEM.match(path):
        return "/v1/items/{id}"
    return OTHER


REQUESTS = bentoml.metrics.Counter(
    name="feed_http_requests_total",
    documentation="HTTP requests by route template, method and status",
    labelnames=["route", "method", "status"],
)
LATENCY = bentoml.metrics.Histogram(
    name="feed_http_request_duration_seconds",
    documentation="HTTP request latency by route template",
    labelnames=["route"],
    buckets=LATENCY_BUCKETS,
)
TRITON = bentoml.metrics.Histogram(
    name="feed_triton_request_duration_seconds",
    documentation="recommend calls to Triton by outcome and recommend version (newest, or the previous one's number during a canary)",
    labelnames=["outcome", "version"],
    buckets=LATENCY_BUCKETS,
)
ITEMS = bentoml.metrics.Counter(name="feed_items_served_total", documentation="Feed items served by type", labelnames=["type"])
FALLBACKS = bentoml.metrics.Counter(name="feed_fallbacks_total", documentation="Fallback feeds served, by reason", labelnames=["reason"])
EVENTS = bentoml.metrics.Counter(name="feed_events_total", documentation="Event batches by outcome", labelnames=["outcome"])
REDIS_ERRORS = bentoml.metrics.Counter(name="feed_redis_errors_total", documentation="Failed Redis operations", labelnames=["operation"])

_LABEL = re.compile(r'(endpoint|path|route)="([^"]*)"')


def bounded_exposition(text: str) -> str:
    """Drop the series whose path label is not a known route template (BentoML's raw paths)."""
    keep = []
    for line in text.splitlines():
        if not line.startswith("#"):
            m = _LABEL.search(line)
            if m and m.group(2) not in ROUTES and m.group(2) != OTHER:
                continue
        keep.append(line)
    return "\n".join(keep) + "\n"


# Ads. Labels are bounded: outcomes from fixed sets, the bucket is one of AdsConfig.ab_buckets'
# indices, the model version one of the two served; never a campaign, user or item id.
AD_AUCTIONS = bentoml.metrics.Counter(
    name="feed_ad_auctions_total",
    documentation="Ad auctions by outcome: filled (an ad placed), empty (no ad won or fit), no_candidates, unavailable (Redis or pCTR failed: no ads, fail closed)",
    labelnames=["outcome"],
)
AD_ELIGIBLE = bentoml.metrics.Histogram(
    name="feed_ad_eligible_ads",
    documentation="Eligible ads per auction (after targeting, caps, budgets and pacing)",
    buckets=(0, 1, 2, 5, 10, 20, 50, 100, 200, 500),
)
ADS_SERVED = bentoml.metrics.Counter(
    name="feed_ads_served_total", documentation="Ads placed on served pages, by experiment bucket", labelnames=["bucket"]
)
AD_ECPM = bentoml.metrics.Histogram(
    name="feed_ad_ecpm",
    documentation="eCPM of each served ad (pCTR x bid x 1000, currency units per thousand impressions)",
    buckets=(0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500),
)
AD_CLICKS = bentoml.metrics.Counter(
    name="feed_ad_clicks_total",
    documentation="Ad clicks by outcome: charged, duplicate (token already charged), exhausted (budget spent), late (past the attribution window), unknown_campaign, ads_off (the last four: recorded, not charged)",
    labelnames=["outcome"],
)
AD_REVENUE = bentoml.metrics.Counter(
    name="feed_ad_revenue_total", documentation="Charged click prices (advertisers' spend = the feed's revenue), currency units"
)
AD_CPC = bentoml.metrics.Histogram(
    name="feed_ad_cpc",
    documentation="GSP price of each charged click, currency units (average CPC = sum / count)",
    buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
)
AD_PACING_RATIO = bentoml.metrics.Histogram(
    name="feed_ad_pacing_ratio",
    documentation="Actual / target spend of each candidate campaign at auction time (1 = on pace)",
    buckets=(0.25, 0.5, 0.8, 0.9, 1.0, 1.1, 1.2, 1.5, 2, 4),
)
AD_REFUSALS = bentoml.metrics.Counter(
    name="feed_ad_refusals_total",
    documentation="Candidate ads left out, by reason: frequency_cap, budget, pacing, cap_race (refused by the atomic serve record)",
    labelnames=["reason"],
)


# Deploy warm-up (feed/warmup.py): a new recommend version's encoder states built before traffic
# moves to it. Outcomes from fixed sets; never a user id or a version number.
WARMUP_USERS = bentoml.metrics.Counter(
    name="feed_warmup_users_total",
    documentation="Users warmed on a newly ready recommend version, by outcome: warmed, failed (Redis or Triton), skipped (no history)",
    labelnames=["outcome"],
)
WARMUP_RUNS = bentoml.metrics.Counter(
    name="feed_warmup_runs_total",
    documentation="Warm-ups of a newly ready recommend version, by how they ended: done, budget (ran out of time), no_users, error (index unreadable)",
    labelnames=["outcome"],
)
WARMUP_DURATION = bentoml.metrics.Histogram(
    name="feed_warmup_duration_seconds",
    documentation="How long a new recommend version was held for its warm-up",
    buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
