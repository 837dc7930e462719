"""Smoke runs of ``python -m loadtest`` against the real Triton serving `tiny`: a few seconds
at a low rate. They prove the locustfile, the gRPC user, the outputs and the gate work (one run
must fail its gate); they are not a performance claim, so the passing run's P99 limit is loose."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def workload(tiny_run, tmp_path_factory) -> Path:
    from loadtest.workload import build

    return build(tiny_run, tmp_path_factory.mktemp("loadtest") / "workload.json", max_users=300)


def _loadtest(out: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    cmd = [sys.executable, "-m", "loadtest", "run", "--out", str(out), *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180)
    summary = out / "summary.json"
    assert summary.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(summary.read_text())


def test_recommend_smoke_run_passes_a_loose_gate_and_writes_csv_html_json(tiny_triton, workload, tmp_path):
    proc, s = _loadtest(
        tmp_path,
        *("--target", "recommend", "--rate", "4", "--duration", "5s", "--triton-grpc", tiny_triton.grpc_url),
        # a few seconds of Poisson arrivals reach the target rate only roughly: a loose floor here
        *("--workload", str(workload), "--recommend-p99-ms", "5000", "--min-rate-ratio", "0.3"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert s["passed"] and s["total_requests"] >= 5 and s["fail_ratio"] == 0
    (ep,) = [e for e in s["endpoints"] if e["name"] == "recommend"]
    assert 0 < ep["p50_ms"] <= ep["p99_ms"] and s["generator_cpu"] is not None
    for f in ("locust_stats.csv", "locust_stats_history.csv", "report.html"):
        assert (tmp_path / f).stat().st_size > 0, f
    assert "recommend" in (tmp_path / "locust_stats.csv").read_text()


def test_an_impossible_p99_and_a_cpu_bound_generator_fail_the_gate(tiny_triton, workload, tmp_path):
    proc, s = _loadtest(
        tmp_path,
        *("--target", "recommend", "--rate", "4", "--duration", "3s", "--triton-grpc", tiny_triton.grpc_url),
        *("--workload", str(workload), "--recommend-p99-ms", "0.001", "--max-generator-cpu", "0"),
    )
    assert proc.returncode == 1 and not s["passed"]
    reasons = " | ".join(s["reasons"])
    assert "recommend: P99" in reasons and "> 0.001 ms" in reasons
    assert "CPU-bound" in reasons  # any CPU use is over a limit of 0: the rule fires
    assert "GATE FAILED" in proc.stderr


def test_a_service_that_is_down_fails_the_gate_on_failures(workload, tmp_path, free_port):
    proc, s = _loadtest(
        tmp_path,
        *("--target", "recommend", "--rate", "4", "--duration", "2s", "--triton-grpc", f"127.0.0.1:{free_port()}"),
        *("--workload", str(workload)),
    )
    assert proc.returncode == 1 and s["fail_ratio"] == 1.0 and any("failure ratio" in r for r in s["reasons"])
    assert "UNAVAILABLE" in json.dumps(s["errors"])


def test_feed_smoke_run(tiny_feed, workload, tmp_path):
    proc, s = _loadtest(
        tmp_path,
        *("--target", "feed", "--rate", "6", "--duration", "5s", "--feed-url", tiny_feed.url),
        *("--workload", str(workload), "--feed-p99-ms", "5000", "--min-rate-ratio", "0.3"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = {e["name"]: e for e in s["endpoints"]}
    assert names["/v1/feed"]["requests"] > 0 and s["fail_ratio"] == 0, s
    assert set(names) <= {"/v1/feed", "/v1/events", "/v1/items/{id}", "/v1/items/{id}/similar"}
