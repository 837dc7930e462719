"""What on-call looks at, declared once: recording rules, alerts and dashboard panels as
PromQL over the metrics the services declare (``genrec.ensemble.serving_metrics``, the feed's
``feed/metrics.py``) and Triton's own ``nv_*`` metrics listed in ``TRITON_METRICS``.

A test parses every expression here and checks each metric it names is declared.
"""

from __future__ import annotations

from dataclasses import dataclass, field

WINDOW = "5m"
RECOMMEND = 'model="recommend"'
API = 'route=~"/v1/.*"'  # the API routes, not /metrics or the probes
# Triton's own metrics used below (present on every Triton metrics port; the Prometheus test
# checks them on a real server).
TRITON_METRICS = (
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_queue_duration_us",
    "nv_inference_request_duration_us",
    "nv_inference_pending_request_count",
)
# Series Prometheus writes itself for every scrape target.
PROMETHEUS_SERIES = ("up",)
FEED = 'route="/v1/feed"'
SLO_P99_SECONDS = 0.040
SLO_ERROR_RATIO = 0.0005
SLO_FOR = "5m"
MAX_FALLBACK_RATIO = 0.01  # fallback feeds (Triton slow, down or refusing) over /v1/feed requests
TARGET_DOWN_FOR = "1m"


@dataclass(frozen=True)
class Rule:
    record: str
    expr: str


def _quantile(q: float, metric: str, by: str = "", selector: str = "") -> str:
    labels = f"le, {by}" if by else "le"
    sel = f"{{{selector}}}" if selector else ""
    return f"histogram_quantile({q}, sum by ({labels}) (rate({metric}_bucket{sel}[{WINDOW}])))"


def _requests(selector: str) -> str:
    return (
        f"sum(rate(nv_inference_request_success{{{selector}}}[{WINDOW}])) + sum(rate(nv_inference_request_failure{{{selector}}}[{WINDOW}]))"
    )


RECORDING_RULES = (
    Rule("genrec:recommend_stage_seconds:p50_5m", _quantile(0.5, "genrec_recommend_stage_duration_seconds", "stage")),
    Rule("genrec:recommend_stage_seconds:p99_5m", _quantile(0.99, "genrec_recommend_stage_duration_seconds", "stage")),
    Rule("genrec:recommend_request_seconds:p50_5m", _quantile(0.5, "genrec_recommend_request_duration_seconds")),
    Rule("genrec:recommend_request_seconds:p99_5m", _quantile(0.99, "genrec_recommend_request_duration_seconds")),
    Rule("genrec:recommend_requests:rate5m", _requests(RECOMMEND)),
    Rule(
        "genrec:recommend_error_ratio:rate5m",
        f"sum(rate(nv_inference_request_failure{{{RECOMMEND}}}[{WINDOW}])) / clamp_min({_requests(RECOMMEND)}, 1e-9)",
    ),
    Rule("genrec:feed_request_seconds:p50_5m", _quantile(0.5, "feed_http_request_duration_seconds", "route")),
    Rule("genrec:feed_request_seconds:p99_5m", _quantile(0.99, "feed_http_request_duration_seconds", "route")),
    Rule("genrec:feed_requests:rate5m", f"sum by (route) (rate(feed_http_requests_total[{WINDOW}]))"),
    Rule(
        "genrec:feed_error_ratio:rate5m",
        # the API routes only: /readyz answers 503 by design while a dependency is down, and
        # probes and scrapes would dilute the ratio
        f'sum(rate(feed_http_requests_total{{status=~"5..", {API}}}[{WINDOW}])) / clamp_min(sum(rate(feed_http_requests_total{{{API}}}[{WINDOW}])), 1e-9)',
    ),
    Rule(
        "genrec:feed_fallback_ratio:rate5m",
        f"sum(rate(feed_fallbacks_total[{WINDOW}])) / clamp_min(sum(rate(feed_http_requests_total{{{FEED}}}[{WINDOW}])), 1e-9)",
    ),
    # the calls that answered: a failed call (timeout, unavailable) is recorded under its own
    # outcome and would put the deadline into the P99
    Rule("genrec:feed_triton_seconds:p99_5m", _quantile(0.99, "feed_triton_request_duration_seconds", selector='outcome="ok"')),
    # fill rate: the share of feed pages whose auction placed an ad
    Rule(
        "genrec:feed_ad_fill_rate:rate5m",
        f'sum(rate(feed_ad_auctions_total{{outcome="filled"}}[{WINDOW}])) / clamp_min(sum(rate(feed_ad_auctions_total{{outcome!="off"}}[{WINDOW}])), 1e-9)',
    ),
    Rule("genrec:feed_ad_cpc:avg5m", f"sum(rate(feed_ad_cpc_sum[{WINDOW}])) / clamp_min(sum(rate(feed_ad_cpc_count[{WINDOW}])), 1e-9)"),
)


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    summary: str
    severity: str = "page"
    for_: str = SLO_FOR


ALERTS = (
    Alert(
        "GenrecRecommendP99High",
        f"genrec:recommend_request_seconds:p99_5m > {SLO_P99_SECONDS}",
        "recommend P99 above 40 ms for 5 minutes (stage P99s: genrec:recommend_stage_seconds:p99_5m)",
    ),
    Alert(
        "GenrecFeedTritonP99High",
        f"genrec:feed_triton_seconds:p99_5m > {SLO_P99_SECONDS}",
        "the feed's calls to recommend take over 40 ms at P99 for 5 minutes (network, queueing or Triton)",
    ),
    Alert(
        "GenrecRecommendErrorRatioHigh",
        f"genrec:recommend_error_ratio:rate5m > {SLO_ERROR_RATIO}",
        "more than 0.05% of recommend requests fail for 5 minutes (see genrec_recommend_rejected_total by reason)",
    ),
    Alert(
        "GenrecFeedErrorRatioHigh",
        f"genrec:feed_error_ratio:rate5m > {SLO_ERROR_RATIO}",
        "more than 0.05% of feed API requests (/v1/...) answer 5xx for 5 minutes",
    ),
    Alert(
        "GenrecFeedFallbackRatioHigh",
        f"genrec:feed_fallback_ratio:rate5m > {MAX_FALLBACK_RATIO}",
        "more than 1% of /v1/feed answers are fallback feeds for 5 minutes (Triton slow or down; feed_fallbacks_total by reason)",
    ),
    Alert(
        "GenrecTargetDown",
        "up == 0",
        "Prometheus cannot scrape {{ $labels.job }} ({{ $labels.instance }}) for 1 minute",
        for_=TARGET_DOWN_FOR,
    ),
)


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str  # Grafana unit: s, ms, reqps, percentunit, short, bytes
    targets: tuple[tuple[str, str], ...]  # (legend, PromQL)
    key: bool = False  # rendered by `python -m dashboards.render`
    description: str = ""
    extra: dict = field(default_factory=dict)


def _per_second(metric: str, by: str, selector: str = "") -> str:
    sel = f"{{{selector}}}" if selector else ""
    return f"sum by ({by}) (rate({metric}{sel}[1m]))"


PANELS = (
    Panel(
        "Request rate",
        "reqps",
        (("recommend", "genrec:recommend_requests:rate5m"), ("feed {{route}}", f"genrec:feed_requests:rate5m{{{API}}}")),
        key=True,
    ),
    Panel(
        "recommend P50 / P99 per stage",
        "s",
        (("p99 {{stage}}", "genrec:recommend_stage_seconds:p99_5m"), ("p50 {{stage}}", "genrec:recommend_stage_seconds:p50_5m")),
        key=True,
        description="Inside the recommend model: encode, generate (beam search), retrieve (ANN), prerank, rank.",
    ),
    Panel(
        "recommend request P50 / P99 (SLO 40 ms)",
        "s",
        (("p99", "genrec:recommend_request_seconds:p99_5m"), ("p50", "genrec:recommend_request_seconds:p50_5m")),
        key=True,
    ),
    Panel(
        "Feed P99 per route",
        "s",
        (
            ("p99 {{route}}", f"genrec:feed_request_seconds:p99_5m{{{API}}}"),
            ("feed -> recommend p99 (ok)", "genrec:feed_triton_seconds:p99_5m"),
        ),
        key=True,
    ),
    Panel(
        "Error ratio (SLO 0.05%)",
        "percentunit",
        (("recommend", "genrec:recommend_error_ratio:rate5m"), ("feed /v1 5xx", "genrec:feed_error_ratio:rate5m")),
        key=True,
    ),
    Panel(
        "Refused requests and errors by reason",
        "reqps",
        (
            ("recommend {{reason}}", _per_second("genrec_recommend_rejected_total", "reason")),
            ("feed {{status}}", _per_second("feed_http_requests_total", "status", 'status=~"[45].."')),
            ("redis {{operation}}", _per_second("feed_redis_errors_total", "operation")),
            ("ANN unavailable: generation alone", "sum(rate(genrec_ann_unavailable_total[1m]))"),
        ),
    ),
    Panel(
        "Triton queue time per request",
        "ms",
        (
            (
                "{{model}}",
                "sum by (model) (rate(nv_inference_queue_duration_us[1m])) / 1000 / "
                "clamp_min(sum by (model) (rate(nv_inference_request_success[1m])), 1e-9)",
            ),
        ),
        description="Time requests wait in Triton's scheduler queue before running (ms per request).",
    ),
    Panel("Triton pending requests", "short", (("{{model}}", "sum by (model) (nv_inference_pending_request_count)"),)),
    Panel(
        "Encoder-cache hit rate",
        "percentunit",
        (
            (
                "hit rate",
                "sum(rate(genrec_encoder_cache_hits_total[5m])) / "
                "clamp_min(sum(rate(genrec_encoder_cache_hits_total[5m])) + sum(rate(genrec_encoder_cache_misses_total[5m])), 1e-9)",
            ),
            ("evictions/s", "sum(rate(genrec_encoder_cache_evictions_total[5m]))"),
        ),
        key=True,
    ),
    Panel("Encoder-cache memory", "bytes", (("bytes", "sum(genrec_encoder_cache_bytes)"), ("users", "sum(genrec_encoder_cache_entries)"))),
    Panel(
        "Candidates per request by stage",
        "short",
        (
            (
                "{{stage}}",
                "sum by (stage) (rate(genrec_recommend_candidates_sum[5m])) / clamp_min(sum by (stage) (rate(genrec_recommend_candidates_count[5m])), 1e-9)",
            ),
        ),
        description="Mean candidates after generation, merge with ANN (<= 1000), pre-rank (100), and returned.",
    ),
    Panel("Feed composition (items served by type)", "short", (("{{type}}", _per_second("feed_items_served_total", "type")),), key=True),
    Panel(
        "Feed fallbacks by reason",
        "short",
        (("{{reason}}", _per_second("feed_fallbacks_total", "reason")), ("share of /v1/feed", "genrec:feed_fallback_ratio:rate5m")),
        description="Fallback feeds per second by reason, and their share of /v1/feed answers (alert over 1% for 5 minutes).",
    ),
    Panel("Events by outcome", "short", (("{{outcome}}", _per_second("feed_events_total", "outcome")),)),
    Panel(
        "Ads: fill rate and auctions",
        "short",
        (
            ("fill rate (pages with an ad)", "genrec:feed_ad_fill_rate:rate5m"),
            ("auctions {{outcome}} / s", _per_second("feed_ad_auctions_total", "outcome")),
            ("ads served / s", _per_second("feed_ads_served_total", "bucket")),
        ),
        key=True,
        description="The share of feed pages whose auction placed an ad; auctions by outcome (unavailable = Redis or pCTR down: no ads).",
    ),
    Panel(
        "Ads: revenue, average CPC and eCPM",
        "short",
        (
            ("revenue / s", f"sum(rate(feed_ad_revenue_total[{WINDOW}]))"),
            ("average CPC", "genrec:feed_ad_cpc:avg5m"),
            ("average eCPM served", f"sum(rate(feed_ad_ecpm_sum[{WINDOW}])) / clamp_min(sum(rate(feed_ad_ecpm_count[{WINDOW}])), 1e-9)"),
        ),
        key=True,
    ),
    Panel(
        "Ads: clicks, refusals and pacing",
        "short",
        (
            ("clicks {{outcome}}", _per_second("feed_ad_clicks_total", "outcome")),
            ("refused {{reason}}", _per_second("feed_ad_refusals_total", "reason")),
            ("pacing ratio p50 (actual / target)", _quantile(0.5, "feed_ad_pacing_ratio")),
        ),
        description="Clicks charged, duplicate (a retried token) or exhausted (budget spent); candidate ads left out by reason; "
        "the median campaign's spend against its target curve (1 = on pace).",
    ),
    Panel(
        "recommend versions (canary split)",
        "reqps",
        (("{{version}} {{outcome}}", _per_second("feed_triton_request_duration_seconds_count", "version, outcome")),),
        description="The feed's recommend calls by version: newest, or the previous version's number for users outside the canary.",
    ),
)
