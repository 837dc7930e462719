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
    documentation="recommend calls to Triton by outcome",
    labelnames=["outcome"],
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
