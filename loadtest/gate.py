"""The pass/fail gate of a load test: P99 per gated request, the failure ratio, whether the
target rate was reached, and whether the load generator itself was CPU-bound (then its P99
measures the generator, not the service, and the run cannot pass).

Pure functions over numbers, so the rules are unit-tested; the locustfile feeds them locust's
stats at the end of a run and writes the summary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# request name (as reported to locust) -> default P99 limit in ms
DEFAULT_P99_MS = {"recommend": 50.0, "/v1/feed": 80.0}
DEFAULT_MAX_FAIL_RATIO = 0.001
DEFAULT_MAX_GENERATOR_CPU = 0.90  # share of one core: locust runs one core per process
DEFAULT_MIN_RATE_RATIO = 0.9  # a P99 measured at half the load says little about the full load


@dataclass(frozen=True)
class Thresholds:
    p99_ms: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_P99_MS))
    max_fail_ratio: float = DEFAULT_MAX_FAIL_RATIO
    max_generator_cpu: float = DEFAULT_MAX_GENERATOR_CPU
    min_rate_ratio: float = DEFAULT_MIN_RATE_RATIO


@dataclass(frozen=True)
class Endpoint:
    name: str
    requests: int
    failures: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    rps: float


@dataclass
class Verdict:
    passed: bool
    reasons: list[str]
    endpoints: list[Endpoint]
    total_requests: int
    fail_ratio: float
    target_rps: float | None
    achieved_rps: float
    generator_cpu: float | None
    generator_cpu_warning: bool
    thresholds: Thresholds

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge(
    endpoints: list[Endpoint],
    gated: list[str],
    total_requests: int,
    total_failures: int,
    thresholds: Thresholds,
    duration_s: float,
    target_rps: float | None = None,
    generator_cpu: float | None = None,
    generator_cpu_warning: bool = False,
) -> Verdict:
    """``gated``: the request names whose P99 is checked (those of the user classes that ran);
    each needs a limit in ``thresholds.p99_ms``, else the gate fails. ``target_rps``: the mean
    rate the run asked for (for a step or spike shape, its mean over the run, see
    ``shapes.expected_rate``); under ``min_rate_ratio`` of it the gate fails."""
    reasons = []
    by_name = {e.name: e for e in endpoints}
    for name in gated:
        limit = thresholds.p99_ms.get(name)
        e = by_name.get(name)
        if e is None or e.requests == 0:
            reasons.append(f"{name}: no requests were made, nothing to gate")
        elif limit is None:
            reasons.append(f"{name}: no P99 limit is configured for it, so its P99 cannot pass")
        elif e.p99_ms > limit:
            reasons.append(f"{name}: P99 {e.p99_ms:.1f} ms > {limit:g} ms")
    fail_ratio = total_failures / total_requests if total_requests else 0.0
    if total_requests == 0:
        reasons.append("no requests at all")
    if fail_ratio > thresholds.max_fail_ratio:
        reasons.append(f"failure ratio {fail_ratio:.4%} > {thresholds.max_fail_ratio:.4%} ({total_failures} of {total_requests})")
    achieved = total_requests / duration_s if duration_s > 0 else 0.0
    if target_rps and achieved < thresholds.min_rate_ratio * target_rps:
        reasons.append(f"achieved {achieved:.1f} req/s, under {thresholds.min_rate_ratio:.0%} of the target {target_rps:.3g} req/s")
    cpu_bound = generator_cpu_warning or (generator_cpu is not None and generator_cpu > thresholds.max_generator_cpu)
    if cpu_bound:
        shown = f"{generator_cpu:.0%} of a core" if generator_cpu is not None else "locust's CPU warning"
        reasons.append(
            f"the load generator was CPU-bound ({shown} > {thresholds.max_generator_cpu:.0%}): its latencies are not the "
            "service's; run with --processes N or more workers"
        )
    return Verdict(
        not reasons, reasons, endpoints, total_requests, fail_ratio, target_rps, achieved, generator_cpu, generator_cpu_warning, thresholds
    )


def describe(v: Verdict) -> str:
    lines = [f"{'request':<28} {'count':>7} {'fail':>5} {'p50':>7} {'p95':>7} {'p99':>7} {'max':>7} {'req/s':>7}"]
    for e in v.endpoints:
        lines.append(
            f"{e.name:<28} {e.requests:>7} {e.failures:>5} {e.p50_ms:>7.1f} {e.p95_ms:>7.1f} {e.p99_ms:>7.1f} {e.max_ms:>7.1f} {e.rps:>7.1f}"
        )
    cpu = f"{v.generator_cpu:.0%} of a core" if v.generator_cpu is not None else "not measured"
    target = f" (target {v.target_rps:.3g})" if v.target_rps else ""
    lines.append(f"total {v.total_requests} requests, {v.achieved_rps:.1f} req/s{target}, failures {v.fail_ratio:.3%}, generator CPU {cpu}")
    lines.append("GATE PASSED" if v.passed else "GATE FAILED: " + "; ".join(v.reasons))
    return "\n".join(lines)
