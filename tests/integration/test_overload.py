"""Overload on the default ``recommend`` (no bounded queue: Triton's default scheduler, see
bench/results/queue_policy.json), through ``bench.queue_policy``'s flood: concurrent requests,
each with a client deadline. Every request is answered or fails at its deadline, nothing else; the
requests whose callers gave up while queued are skipped by the model
(``genrec_recommend_rejected_total{reason="cancelled"}``), so the backlog drains at once and the
next request is answered promptly."""

from __future__ import annotations

import re

import pytest

from bench.queue_policy import flood
from genrec.runtime.triton_server import metrics_settle_s, scrape_metrics

pytestmark = pytest.mark.integration
pytest.importorskip("tritonclient.grpc")

FLOOD = 400  # ~17 ms each here: several times the deadline even on a much faster machine
DEADLINE_S = 1.0


def _cancelled(metrics_url: str) -> float:
    text = scrape_metrics(metrics_url, metrics_settle_s())
    return sum(float(v) for v in re.findall(r'genrec_recommend_rejected_total\{[^}]*reason="cancelled"[^}]*\} ([0-9.e+-]+)', text))


def test_a_flood_with_deadlines_is_answered_or_given_up_and_leaves_no_backlog(tiny_triton):
    before = _cancelled(tiny_triton.metrics_url)
    out = flood(tiny_triton.grpc_url, FLOOD, DEADLINE_S)
    print(f"\nflood: {out}")
    codes = out["outcomes"]
    assert set(codes) <= {"OK", "DEADLINE_EXCEEDED"}, out
    assert codes.get("OK", 0) > 0 and codes.get("DEADLINE_EXCEEDED", 0) > 0, out  # more work than the deadline allows
    assert out["slowest_s"] < DEADLINE_S + 0.5, out
    # the callers that gave up cost the model nothing: the next request is not queued behind them
    assert out["next_request"] == "OK" and out["next_request_ms"] < 1000, out
    assert _cancelled(tiny_triton.metrics_url) - before > 0
