"""The chaos run's arithmetic: recovery, windows, p99s, the ledger's lost and doubled writes."""

from __future__ import annotations

import collections

import numpy as np

from genrec.feed.history import pack
from loadtest.chaos import InjectedFault, fault_figures, recovery_s, timeline, writes_in
from loadtest.ledger import AckedBatch, AckedPage, applied_counts, cap_shortfalls, history_counts
from loadtest.request_log import LoggedRequest, RequestLog, read


def steady(start: float, end: float, step: float = 0.1, ms: float = 20.0, name: str = "/v1/feed") -> list[LoggedRequest]:
    return [LoggedRequest(float(t), name, ms, True) for t in np.arange(start, end, step)]


def test_recovery_is_the_end_of_the_last_bad_answer_followed_by_a_clean_stretch():
    reqs = steady(0, 10) + [LoggedRequest(11.0, "/v1/feed", 30, True, fallback=True), LoggedRequest(12.5, "recommend", 5, False, error="x")]
    reqs += steady(13, 30)
    assert recovery_s(sorted(reqs, key=lambda r: r.t), at=10.0, end=30.0, clean_s=3.0) == 2.5


def test_a_stray_failure_long_after_the_burst_is_not_the_fault_and_bad_answers_during_the_injection_are():
    reqs = steady(10, 60) + [LoggedRequest(t, "recommend", 5, False) for t in (10.5, 12.0, 14.0, 40.0)]
    reqs.sort(key=lambda r: r.t)
    assert recovery_s(reqs, at=10.0, end=60.0, clean_s=5.0) == 4.0, "the stray failure at 40 s is the background's"
    # a publish: failures while its command still runs (done at 45 s) belong to it, however spread
    assert recovery_s(reqs, at=10.0, end=60.0, clean_s=5.0, done_at=45.0) == 30.0
    f = fault_figures(reqs, InjectedFault("stub_kill", 10.0, 10.1), window_end=60.0)
    assert f["recovery_s"] == 4.0 and f["stray_bad"] == 1


def test_no_bad_answer_is_an_immediate_recovery_and_a_bad_one_at_the_end_is_none():
    assert recovery_s(steady(10, 20), at=10.0, end=20.0, clean_s=3.0) == 0.0
    failing = steady(10, 20) + [LoggedRequest(t, "/v1/feed", 5, False) for t in np.arange(10.5, 19.6, 1.0)]
    assert recovery_s(sorted(failing, key=lambda r: r.t), at=10.0, end=20.0, clean_s=3.0) is None, "failing to the end"
    lone = steady(10, 19) + [LoggedRequest(19.0, "/v1/feed", 5, False)]
    assert recovery_s(lone, at=10.0, end=20.0, clean_s=3.0) == 0.0, "a lone bad answer long after the injection is a stray"


def test_fault_figures_split_before_during_after_and_count_per_request():
    reqs = steady(0, 10, ms=10.0) + steady(10, 14, ms=500.0) + [LoggedRequest(13.9, "recommend", 900, False, error="UNAVAILABLE")]
    reqs += steady(14, 40, ms=12.0)
    reqs.sort(key=lambda r: r.t)
    # the slow answers are not 'bad' (they succeeded): recovery is at the failed recommend call
    f = fault_figures(reqs, InjectedFault("stub_kill", 10.0, 10.2), window_end=40.0, before_s=10, after_s=10)
    assert f["recovery_s"] == 3.9 and f["failed"] == 1 and f["fallbacks"] == 0
    assert f["p99_before_ms"] == 10.0 and f["p99_during_ms"] == 500.0 and f["p99_after_ms"] == 12.0
    assert f["slowest_ms"] == 900.0
    assert f["by_request"]["recommend"] == {"requests": 1, "failed": 1, "fallbacks": 0, "p99_ms": 900.0, "slowest_ms": 900.0}
    assert f["errors"] == [{"error": "recommend: UNAVAILABLE", "count": 1}]


def test_timeline_counts_per_second():
    reqs = steady(0, 3, step=0.5) + [LoggedRequest(1.2, "recommend", 1, False)]
    tl = timeline(reqs, 0.0, 3.0)
    assert tl.rps.tolist() == [2, 3, 2] and tl.errors.tolist() == [0, 1, 0]
    assert writes_in([0.5, 1.5, 2.5], 1.0, 2.6) == 2


def test_request_log_round_trips_and_skips_a_cut_line(tmp_path):
    log = RequestLog(tmp_path / "r.jsonl")
    log.write(LoggedRequest(1.0, "/v1/feed", 12.5, True, fallback=True))
    log.write(LoggedRequest(2.0, "recommend", 3.0, False, error="boom"))
    log.close()
    with open(tmp_path / "r.jsonl", "a") as f:
        f.write('{"t": 3.0, "na')  # a generator killed mid-line
    got = list(read(tmp_path / "r.jsonl"))
    assert got == [LoggedRequest(1.0, "/v1/feed", 12.5, True, True, ""), LoggedRequest(2.0, "recommend", 3.0, False, False, "boom")]


def _batch(user: str, tag: float, n: int = 2, acked_at: float = 0.0) -> AckedBatch:
    return AckedBatch(user, "k", {}, n, tag, [], 0.0, acked_at, 1)


def test_a_batch_missing_from_the_history_is_lost_and_one_there_twice_is_doubled():
    t1, t2, t3 = 1000.001, 1000.002, 1000.003
    records = pack(np.array([1, 2, 3, 4, 5, 6]), np.array([t1, t1, t3, t3, t3, t3]), np.zeros(6), np.zeros(6))
    counts = {"u1": history_counts(records)}
    got = {b.tag_time: n for b, n in applied_counts([_batch("u1", t1), _batch("u1", t2), _batch("u1", t3)], counts)}
    assert got == {t1: 1, t2: 0, t3: 2}


def test_cap_counters_below_the_acknowledged_impressions_are_lost_ones():
    pages = [AckedPage("u1", "20261201", [7], 1.0), AckedPage("u1", "20261201", [7, 8], 2.0), AckedPage("u1", "20261201", [7], 3.0)]
    assert cap_shortfalls(pages, {("u1", "20261201", 7): 3, ("u1", "20261201", 8): 1}) == []
    assert cap_shortfalls(pages, {("u1", "20261201", 7): 2, ("u1", "20261201", 8): 5}) == [3.0], "the latest write is the one missing"
    assert collections.Counter(cap_shortfalls(pages, {})) == collections.Counter([1.0, 2.0, 3.0, 2.0])
