"""The key panels as PNG files, for a person without Grafana at hand.

    python -m dashboards.render --prometheus http://localhost:9090 --minutes 30 --out build/dashboards
    python -m dashboards.render --locust-csv build/loadtest/<run>/locust_stats_history.csv --out build/dashboards

From Prometheus: each panel marked ``key`` in ``panels.py`` over the last ``--minutes``
(``/api/v1/query_range``), one PNG per panel plus ``overview.png``. From a locust run: request
rate, P50/P99 and users over time from ``--csv``'s ``_stats_history.csv``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dashboards.panels import PANELS, Panel  # noqa: E402

SCALE = {"s": (1000.0, "ms"), "percentunit": (100.0, "%"), "reqps": (1.0, "req/s"), "ms": (1.0, "ms"), "bytes": (1 / 2**20, "MiB")}


def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus.rstrip('/')}/api/v1/query_range?{q}", timeout=30) as r:
        body = json.loads(r.read())
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return body["data"]["result"]


def _legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{(\w+)\}\}", lambda m: labels.get(m.group(1), ""), template).strip() or "value"


def _draw(ax: Any, panel: Panel, series: list[tuple[str, list[float], list[float]]]) -> None:
    factor, unit = SCALE.get(panel.unit, (1.0, panel.unit))
    for name, ts, vs in series:
        t0 = ts[0] if ts else 0
        ax.plot([(t - t0) / 60 for t in ts], [v * factor for v in vs], label=name)
    ax.set_title(panel.title, fontsize=10)
    ax.set_xlabel("minutes")
    ax.set_ylabel(unit)
    if series:
        ax.legend(fontsize=7, loc="upper left")
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)


def render_prometheus(prometheus: str, minutes: float, out: Path, step: float | None = None) -> list[Path]:
    end = time.time()
    start = end - minutes * 60
    step = step or max(1.0, minutes * 60 / 300)
    panels = [p for p in PANELS if p.key]
    drawn: list[tuple[Panel, list[tuple[str, list[float], list[float]]]]] = []
    for p in panels:
        series = []
        for legend, expr in p.targets:
            for s in query_range(prometheus, expr, start, end, step):
                pts = [(float(t), float(v)) for t, v in s["values"] if not math.isnan(float(v))]
                if pts:
                    series.append((_legend(legend, s["metric"]), [t for t, _ in pts], [v for _, v in pts]))
        drawn.append((p, series))
    return _save(drawn, out)


def _save(drawn: list[tuple[Panel, list[tuple[str, list[float], list[float]]]]], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for p, series in drawn:
        fig, ax = plt.subplots(figsize=(8, 4))
        _draw(ax, p, series)
        fig.tight_layout()
        path = out / (re.sub(r"[^a-z0-9]+", "_", p.title.lower()).strip("_") + ".png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    cols = 2
    rows = math.ceil(len(drawn) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(14, 4 * rows), squeeze=False)
    for ax, (p, series) in zip(axes.flat, drawn):
        _draw(ax, p, series)
    for ax in list(axes.flat)[len(drawn) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "overview.png", dpi=80)
    plt.close(fig)
    return [*written, out / "overview.png"]


def render_locust(history_csv: Path, out: Path) -> list[Path]:
    """Aggregated request rate, failures, P50/P99 and user count over the run."""
    rows = [r for r in csv.DictReader(history_csv.open()) if r.get("Name") == "Aggregated"]
    if not rows:
        raise ValueError(f"{history_csv}: no Aggregated rows (is it locust's _stats_history.csv?)")
    ts = [float(r["Timestamp"]) for r in rows]

    def col(name: str) -> list[float]:
        return [float(r[name]) if r[name] not in ("", "N/A") else math.nan for r in rows]

    drawn = [
        (Panel("Locust request rate", "reqps", ()), [("requests/s", ts, col("Requests/s")), ("failures/s", ts, col("Failures/s"))]),
        (Panel("Locust response time P50 / P99", "ms", ()), [("p50", ts, col("50%")), ("p99", ts, col("99%"))]),
        (Panel("Locust users", "short", ()), [("users", ts, col("User Count"))]),
    ]
    return _save(drawn, out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m dashboards.render", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--prometheus", help="Prometheus base URL, e.g. http://localhost:9090")
    src.add_argument("--locust-csv", type=Path, help="locust's <prefix>_stats_history.csv")
    ap.add_argument("--minutes", type=float, default=30.0, help="Prometheus: how far back (default %(default)s)")
    ap.add_argument("--step", type=float, default=None, help="Prometheus: seconds between points (default: 300 points)")
    ap.add_argument("--out", type=Path, default=Path("build/dashboards"))
    args = ap.parse_args(argv)
    paths = (
        render_prometheus(args.prometheus, args.minutes, args.out, args.step)
        if args.prometheus
        else render_locust(args.locust_csv, args.out)
    )
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
