"""What a fault did to the traffic: the figures of one injected fault, from the request log.

Plain functions over ``LoggedRequest`` lists (``loadtest/request_log.py``) and the fault times, so
the analysis is unit-tested without a server; ``bench/chaos.py`` injects the faults and calls it.

Per fault, between its injection and the next fault (its *window*):
- ``requests`` / ``failed`` / ``fallbacks``: what was sent in the window and how it ended (a
  fallback is a feed answer served without the model or with a part missing);
- ``recovery_s``: from the injection to the end of the fault's burst of bad answers (failed or
  fallback): the last one followed by ``clean_s`` of good answers once the injection is over; 0
  when nothing went wrong; None when the window ended before such a clean stretch (not
  recovered). Later bad answers are counted as ``stray_bad`` (the background's);
- ``p99_before_ms`` (the ``before_s`` before the injection), ``p99_during_ms`` (injection to
  recovery, or to the end of the injection when later), ``p99_after_ms`` (``after_s`` from
  then), over the gated request (``/v1/feed``);
- ``slowest_ms``: the slowest answer in the window, to hold against the deadline.

The load is locust's paced users (``--rate``): a user whose request is slow starts its next one
about on schedule but not before the answer, so a fault that slows answers also sends fewer
requests (``requests`` shows it); failures come back within the callers' deadlines, so they are
counted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from loadtest.request_log import LoggedRequest

FEED = "/v1/feed"


@dataclass(frozen=True)
class InjectedFault:
    fault: str
    at: float  # unix time the injection started
    done_at: float  # unix time the injection returned (a restart or publish command finished)
    detail: str = ""


def p99(ms: Sequence[float]) -> float | None:
    return round(float(np.percentile(np.asarray(ms), 99)), 2) if len(ms) else None


def p50(ms: Sequence[float]) -> float | None:
    return round(float(np.percentile(np.asarray(ms), 50)), 2) if len(ms) else None


def _between(requests: Sequence[LoggedRequest], start: float, end: float, name: str | None = None) -> list[LoggedRequest]:
    return [r for r in requests if start <= r.t < end and (name is None or r.name == name)]


def bad(r: LoggedRequest) -> bool:
    return not r.ok or r.fallback


def recovery_s(window: Sequence[LoggedRequest], at: float, end: float, clean_s: float, done_at: float | None = None) -> float | None:
    """Seconds from ``at`` to the end of the fault's burst of bad answers: the last bad answer
    that is followed by ``clean_s`` without one, once the injection is over (``done_at``). Bad
    answers after that stretch are the background's (a busy machine's stray timeouts), not
    the fault's: they are counted apart (``stray_bad``). None: no such stretch before ``end``."""
    done = at if done_at is None else done_at
    bads = sorted(r.t for r in window if bad(r))
    if not bads:
        return 0.0
    last: float | None = None
    for b in bads:
        # a bad answer after the injection, ``clean_s`` after the previous one (or after the
        # injection's end), opens a new burst: the background's, not this fault's
        ref = done if last is None or last < done else last
        if b >= done and b - ref >= clean_s:
            break
        last = b
    if last is None:
        return 0.0
    if end - last < clean_s or not any(r.t > last for r in window):
        return None
    return round(last - at, 2)


def fault_figures(
    requests: Sequence[LoggedRequest],
    fault: InjectedFault,
    window_end: float,
    before_s: float = 20.0,
    after_s: float = 20.0,
    clean_s: float = 5.0,
) -> dict[str, object]:
    window = _between(requests, fault.at, window_end)
    rec = recovery_s(window, fault.at, window_end, clean_s, fault.done_at)
    # "after" starts once the fault is over and its injection has finished (a publish is over when
    # the new version is loaded, however quickly requests were served meanwhile)
    recovered_at = max(fault.at + rec, fault.done_at) if rec is not None else window_end
    ms = lambda rs: [r.ms for r in rs]  # noqa: E731
    by_name = sorted({r.name for r in window})
    return {
        "fault": fault.fault,
        "detail": fault.detail,
        "at": round(fault.at, 2),
        "injection_s": round(fault.done_at - fault.at, 2),
        "requests": len(window),
        "failed": sum(not r.ok for r in window),
        "fallbacks": sum(r.fallback for r in window),
        "recovery_s": rec,
        "stray_bad": sum(bad(r) for r in window if rec is not None and r.t > fault.at + rec),
        "p99_before_ms": p99(ms(_between(requests, fault.at - before_s, fault.at, FEED))),
        "p99_during_ms": p99(ms(_between(requests, fault.at, recovered_at, FEED))),
        "p99_after_ms": p99(ms(_between(requests, recovered_at, min(window_end, recovered_at + after_s), FEED))),
        "slowest_ms": round(max((r.ms for r in window), default=0.0), 1),
        "by_request": {
            n: {
                "requests": len(rs := [r for r in window if r.name == n]),
                "failed": sum(not r.ok for r in rs),
                "fallbacks": sum(r.fallback for r in rs),
                "p99_ms": p99(ms(rs)),
                "slowest_ms": round(max(ms(rs), default=0.0), 1),
            }
            for n in by_name
        },
        "errors": _top_errors(window),
    }


def _top_errors(window: Sequence[LoggedRequest], n: int = 5) -> list[dict[str, object]]:
    counts: dict[str, int] = {}
    for r in window:
        if not r.ok:
            key = f"{r.name}: {r.error[:120]}"
            counts[key] = counts.get(key, 0) + 1
    return [{"error": k, "count": c} for k, c in sorted(counts.items(), key=lambda kv: -kv[1])[:n]]


def writes_in(acked_times: Sequence[float], start: float, end: float) -> int:
    return sum(start <= t < end for t in acked_times)


@dataclass(frozen=True)
class Timeline:
    t: np.ndarray  # seconds since the start
    rps: np.ndarray
    errors: np.ndarray
    fallbacks: np.ndarray
    p99_ms: np.ndarray  # of the gated request, over a trailing window (NaN: no requests)


def timeline(requests: Sequence[LoggedRequest], start: float, end: float, p99_window_s: float = 5.0) -> Timeline:
    n = max(1, math.ceil(end - start))
    rps, errors, fallbacks = np.zeros(n), np.zeros(n), np.zeros(n)
    feed_ms: list[list[float]] = [[] for _ in range(n)]
    for r in requests:
        i = int(r.t - start)
        if 0 <= i < n:
            rps[i] += 1
            errors[i] += not r.ok
            fallbacks[i] += r.fallback
            if r.name == FEED:
                feed_ms[i].append(r.ms)
    w = max(1, int(p99_window_s))
    p = np.full(n, np.nan)
    for i in range(n):
        span = [x for b in feed_ms[max(0, i - w + 1) : i + 1] for x in b]
        if span:
            p[i] = np.percentile(span, 99)
    return Timeline(np.arange(n, dtype=float), rps, errors, fallbacks, p)
