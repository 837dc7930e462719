"""dashboards/: the committed files are what panels.py generates, every PromQL expression names
only declared metrics, and promtool accepts the rules and the config."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dashboards import build
from dashboards.panels import ALERTS, PANELS, PROMETHEUS_SERIES, RECORDING_RULES, TRITON_METRICS

REPO = Path(__file__).resolve().parents[2]
FUNCTIONS_AND_KEYWORDS = {"sum", "rate", "histogram_quantile", "clamp_min", "by", "without", "and", "or", "unless", "on", "ignoring"}


def metric_names(expr: str) -> set[str]:
    """The metric (or recorded series) names a PromQL expression reads."""
    s = re.sub(r'"[^"]*"', "", expr)  # strings
    s = re.sub(r"\{[^}]*\}", "", s)  # label matchers
    s = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", s)  # grouping labels
    s = re.sub(r"\[[^\]]*\]", "", s)  # range windows
    s = re.sub(r"(?<![A-Za-z0-9_:])\d+(\.\d+)?(e-?\d+)?", "", s)  # numbers
    names = {m.group(1) for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\(?)", s) if not m.group(2)}  # not a function call
    return names - FUNCTIONS_AND_KEYWORDS


def declared_series() -> set[str]:
    from genrec.ensemble.serving_metrics import ALL, HISTOGRAM

    names: set[str] = set(TRITON_METRICS) | set(PROMETHEUS_SERIES) | {r.record for r in RECORDING_RULES}
    for spec in ALL:
        names |= {spec.name + sfx for sfx in ("_bucket", "_sum", "_count")} if spec.kind == HISTOGRAM else {spec.name}
    # the feed's metrics module, read without importing bentoml: bentoml.metrics.<Kind>(name="...")
    tree = ast.parse((REPO / "feed" / "metrics.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("Counter", "Histogram", "Gauge"):
            name = next(k.value.value for k in node.keywords if k.arg == "name" and isinstance(k.value, ast.Constant))
            names |= {name + sfx for sfx in ("_bucket", "_sum", "_count")} if node.func.attr == "Histogram" else {name}
    return names


def all_expressions() -> list[tuple[str, str]]:
    out = [(r.record, r.expr) for r in RECORDING_RULES] + [(a.name, a.expr) for a in ALERTS]
    return out + [(f"panel {p.title!r}", e) for p in PANELS for _, e in p.targets]


def test_metric_name_parser():
    assert metric_names('sum by (le, stage) (rate(a_bucket{x="b c"}[5m])) / clamp_min(b:c + d, 1e-9)') == {"a_bucket", "b:c", "d"}


def test_every_expression_names_declared_metrics_only():
    known = declared_series()
    assert "feed_http_requests_total" in known and "genrec_recommend_stage_duration_seconds_bucket" in known
    missing = {where: sorted(metric_names(e) - known) for where, e in all_expressions() if metric_names(e) - known}
    assert not missing, missing
    used = set().union(*(metric_names(e) for _, e in all_expressions()))
    assert {"genrec_recommend_stage_duration_seconds_bucket", "nv_inference_queue_duration_us", "feed_items_served_total"} <= used


def test_committed_files_are_generated_from_panels():
    assert build.main(["--check"]) == 0, "run: python -m dashboards.build"


def test_dashboard_has_the_on_call_panels():
    d = build.grafana_dashboard()
    titles = " | ".join(p["title"] for p in d["panels"]).lower()
    for needle in ("request rate", "per stage", "error", "queue", "cache hit", "candidates", "composition", "fallbacks"):
        assert needle in titles, needle
    assert len({p["id"] for p in d["panels"]}) == len(d["panels"]) and all(p["targets"] for p in d["panels"])


def test_alerts_follow_the_slos():
    exprs = {a.name: (a.expr, a.for_) for a in ALERTS}
    assert exprs["GenrecRecommendP99High"] == ("genrec:recommend_request_seconds:p99_5m > 0.04", "5m")
    assert exprs["GenrecRecommendErrorRatioHigh"] == ("genrec:recommend_error_ratio:rate5m > 0.0005", "5m")
    assert exprs["GenrecFeedFallbackRatioHigh"] == ("genrec:feed_fallback_ratio:rate5m > 0.01", "5m")
    assert exprs["GenrecTargetDown"] == ("up == 0", "1m")


def test_feed_rules_read_the_right_series():
    rules = {r.record: r.expr for r in RECORDING_RULES}
    # the feed -> Triton P99 is over the calls that answered; failures are another outcome
    assert 'feed_triton_request_duration_seconds_bucket{outcome="ok"}' in rules["genrec:feed_triton_seconds:p99_5m"]
    # the error ratio counts the API routes only (not /readyz's 503s, not /metrics), both sides
    ratio = rules["genrec:feed_error_ratio:rate5m"]
    assert ratio.count('route=~"/v1/.*"') == 2 and 'status=~"5.."' in ratio
    # fallbacks over /v1/feed requests
    fallback = rules["genrec:feed_fallback_ratio:rate5m"]
    assert "feed_fallbacks_total" in fallback and 'feed_http_requests_total{route="/v1/feed"}' in fallback


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool is not installed (scripts/setup.sh installs prometheus with apt as root)"
)
def test_promtool_accepts_the_rules_and_the_config():
    for args in (["check", "rules", str(build.RULES)], ["check", "config", str(build.CONFIG)]):
        out = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
    assert (
        f"SUCCESS: {len(RECORDING_RULES) + len(ALERTS)} rules found"
        in subprocess.run(["promtool", "check", "rules", str(build.RULES)], capture_output=True, text=True).stdout
    )
