"""A real Prometheus on loopback with dashboards/' config and rules, scraping the real Triton
(`tiny`) and feed service under a little load: PromQL over its HTTP API returns a P99 per
stage and request rates for both targets, every Triton metric the panels use exists, the rules
load, and the key panels render to PNG."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from dashboards.build import RULES, prometheus_config, rendered
from dashboards.panels import TRITON_METRICS
from genrec.client import Event, FeedClient, RecommendClient
from genrec.runtime.ports import free_port

pytestmark = pytest.mark.integration
HISTORY = ([3, 17, 42, 5], [0, 1, 0, 2], [1.7e9, 1.7e9 + 60, 1.7e9 + 120, 1.7e9 + 180], [0, 0, 1, 0])


@pytest.fixture(scope="module")
def prometheus(tiny_triton, tiny_feed, tmp_path_factory):
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed: scripts/setup.sh installs Debian's package with apt when run as root")
    import yaml

    folder = tmp_path_factory.mktemp("prometheus")
    (folder / "rules.yml").write_text(rendered()[RULES])
    feed_target = tiny_feed.url.split("://", 1)[1]
    # 2 s, not 1 s: a scrape times out at its interval, and on a busy 2-core box the feed's
    # /metrics (multiprocess collection) can take longer than a second
    config = prometheus_config(f"127.0.0.1:{tiny_triton.metrics_port}", feed_target, "rules.yml", "2s", "2s")
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()  # the function, not the fixture: this fixture is module-scoped
    cmd = [
        "prometheus",
        f"--config.file={folder / 'prometheus.yml'}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with open(folder / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.3)
        else:
            raise TimeoutError((folder / "prometheus.log").read_text()[-2000:])
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def query(url: str, expr: str) -> list[dict]:
    q = urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def _values(result: list[dict]) -> list[float]:
    return [float(s["value"][1]) for s in result if not math.isnan(float(s["value"][1]))]


def _load(tiny_triton, tiny_feed, seconds: float) -> None:
    end = time.monotonic() + seconds
    with RecommendClient(tiny_triton.grpc_url) as rec, FeedClient(tiny_feed.url) as feed:
        i = 0
        while time.monotonic() < end:
            rec.recommend(*HISTORY, user_id=f"prom-{i % 5}")
            page = feed.feed(f"u{i % 20}", 3)
            if i % 3 == 0:
                feed.events(f"u{i % 20}", [Event.of(page.items[0], "impression")])
            i += 1
            time.sleep(0.05)


def test_prometheus_gets_p99_and_rates_for_triton_and_the_feed(prometheus, tiny_triton, tiny_feed, tmp_path):
    _load(tiny_triton, tiny_feed, 8.0)
    checks = {
        "stage p99": 'genrec:recommend_stage_seconds:p99_5m{stage="encode"}',
        "recommend p99": "genrec:recommend_request_seconds:p99_5m",
        "recommend rate": "genrec:recommend_requests:rate5m",
        "feed p99": 'genrec:feed_request_seconds:p99_5m{route="/v1/feed"}',
        "feed rate": 'genrec:feed_requests:rate5m{route="/v1/feed"}',
        "recommend error ratio": "genrec:recommend_error_ratio:rate5m",
    }
    got: dict[str, list[float]] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        got = {k: _values(query(prometheus, e)) for k, e in checks.items()}
        if all(got.values()):
            break
        _load(tiny_triton, tiny_feed, 1.0)
    if not all(got.values()):
        with urllib.request.urlopen(f"{prometheus}/api/v1/targets", timeout=10) as r:
            targets = [(t["labels"]["job"], t["health"], t["lastError"]) for t in json.loads(r.read())["data"]["activeTargets"]]
        pytest.fail(f"no value for {[k for k, v in got.items() if not v]}; targets {targets}")
    assert 0 < got["stage p99"][0] < 10 and 0 < got["feed p99"][0] < 10
    assert got["recommend rate"][0] > 0 and got["feed rate"][0] > 0 and got["recommend error ratio"][0] == 0
    up = {s["metric"]["job"]: s["value"][1] for s in query(prometheus, "up")}
    assert up == {"triton": "1", "feed": "1"}
    for name in TRITON_METRICS:
        assert query(prometheus, f"count({name})"), f"{name} is not exported by Triton"
    with urllib.request.urlopen(prometheus + "/api/v1/rules", timeout=10) as r:
        groups = json.loads(r.read())["data"]["groups"]
    assert {g["name"] for g in groups} == {"genrec-recording", "genrec-slo"}
    assert all(rule["health"] == "ok" for g in groups for rule in g["rules"]), groups

    from dashboards.render import render_prometheus

    pngs = render_prometheus(prometheus, 1.0, tmp_path / "png", step=1.0)
    assert len(pngs) >= 5 and all(Path(p).stat().st_size > 5000 for p in pngs)
