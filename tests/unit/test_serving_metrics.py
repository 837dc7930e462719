"""The recommend model's metric definitions and how a request is recorded (fake families)."""

from __future__ import annotations

import re

import numpy as np

from genrec.ensemble.encoder_cache import CacheStats
from genrec.ensemble.request_types import Recommendation
from genrec.ensemble.serving_metrics import ALL, COUNTER, HISTOGRAM, ServingMetrics
from genrec.ensemble.serving_pipeline import STAGES


class FakeMetric:
    def __init__(self, labels, buckets=None):
        self.labels, self.buckets, self.values = labels, buckets, []

    def observe(self, v):
        self.values.append(("observe", v))

    def increment(self, v):
        self.values.append(("increment", v))

    def set(self, v):
        self.values.append(("set", v))


class FakeFamily:
    def __init__(self, spec):
        self.spec, self.metrics = spec, []

    def Metric(self, labels, buckets=None):  # noqa: N802 (pb_utils' name)
        m = FakeMetric(labels, buckets)
        self.metrics.append(m)
        return m


def test_names_follow_prometheus_conventions():
    for s in ALL:
        assert re.fullmatch(r"genrec_[a-z_]+", s.name), s.name
        assert s.name.endswith("_total") == (s.kind == COUNTER), s.name
        if s.kind == HISTOGRAM:
            assert list(s.buckets) == sorted(s.buckets) and s.buckets
        if "duration" in s.name:
            assert s.name.endswith("_seconds")


def _rec(pruned: int) -> Recommendation:
    counts = {"generated": 500, "candidates": 900, "preranked": 100, "returned": 10, "beams_pruned": pruned}
    return Recommendation(np.arange(10), np.zeros(10, np.float32), counts, dict.fromkeys(STAGES, 2.0), "hit")


def test_cache_counters_increase_by_the_delta_and_stages_are_observed_in_seconds():
    fams: dict[str, FakeFamily] = {}

    def make(spec):
        fams[spec.name] = FakeFamily(spec)
        return fams[spec.name]

    m = ServingMetrics(make, {"model_version": "3"})
    m.record(_rec(7), CacheStats(hits=2, misses=1, evictions=0, bytes=1000, entries=3))
    m.flush()
    m.record(_rec(5), CacheStats(hits=5, misses=1, evictions=1, bytes=900, entries=3))
    m.flush()
    hits = fams["genrec_encoder_cache_hits_total"].metrics[0]
    assert hits.values == [("increment", 2.0), ("increment", 3.0)]
    assert fams["genrec_encoder_cache_misses_total"].metrics[0].values == [("increment", 1.0)]
    assert fams["genrec_encoder_cache_bytes"].metrics[0].values[-1] == ("set", 900.0)
    assert fams["genrec_beams_pruned_total"].metrics[0].values == [("increment", 7.0), ("increment", 5.0)]
    stages = fams["genrec_recommend_stage_duration_seconds"].metrics
    assert {x.labels["stage"] for x in stages} == set(STAGES)
    assert all(x.labels["model_version"] == "3" and x.values[0] == ("observe", 0.002) for x in stages)
    m.rejected("invalid_argument")
    m.flush()
    assert fams["genrec_recommend_rejected_total"].metrics[0].labels["reason"] == "invalid_argument"


def test_an_out_of_process_store_reports_no_in_memory_size():
    """With Redis the states are not in this instance: its size gauges must not claim they are."""
    fams: dict[str, FakeFamily] = {}

    def make(spec):
        fams[spec.name] = FakeFamily(spec)
        return fams[spec.name]

    m = ServingMetrics(make, {"model_version": "1"})
    m.record(_rec(1), CacheStats(hits=1, misses=0, bytes=None, entries=None))
    m.flush()
    assert fams["genrec_encoder_cache_hits_total"].metrics[0].values == [("increment", 1.0)]
    assert not fams["genrec_encoder_cache_bytes"].metrics and not fams["genrec_encoder_cache_entries"].metrics


def _families() -> tuple[dict[str, FakeFamily], ServingMetrics]:
    fams: dict[str, FakeFamily] = {}

    def make(spec):
        fams[spec.name] = FakeFamily(spec)
        return fams[spec.name]

    return fams, ServingMetrics(make, {"model_version": "1"})


def _updates(fams: dict[str, FakeFamily]) -> int:
    return sum(len(m.values) for f in fams.values() for m in f.metrics)


def test_a_request_sends_nothing_until_the_flush_which_coalesces_counters_and_gauges():
    """The request path only buffers: every family update happens in flush (off the path)."""
    fams, m = _families()
    m.record(_rec(7), CacheStats(hits=2, misses=1, bytes=1000, entries=3))
    m.record(_rec(5), CacheStats(hits=5, misses=1, bytes=900, entries=4))
    m.rejected("invalid_argument")
    m.ann_failures(2)
    assert _updates(fams) == 0
    sent = m.flush()
    assert sent == _updates(fams) > 0
    assert fams["genrec_beams_pruned_total"].metrics[0].values == [("increment", 12.0)]
    assert fams["genrec_encoder_cache_hits_total"].metrics[0].values == [("increment", 5.0)]
    assert fams["genrec_encoder_cache_entries"].metrics[0].values == [("set", 4.0)]  # the latest value only
    assert fams["genrec_ann_unavailable_total"].metrics[0].values == [("increment", 2.0)]
    # histograms keep every observation: 2 requests x each stage
    stage = fams["genrec_recommend_stage_duration_seconds"].metrics
    assert len(stage) == len(STAGES) and all(len(x.values) == 2 for x in stage)
    assert m.flush() == 0, "a second flush has nothing left to send"


def test_the_flusher_thread_sends_periodically_and_on_stop():
    import time

    from genrec.ensemble.serving_metrics import MetricsFlusher

    fams, m = _families()
    flusher = MetricsFlusher(m, 0.05).start()
    m.record(_rec(1), None)
    deadline = time.monotonic() + 5
    while not fams["genrec_beams_pruned_total"].metrics and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fams["genrec_beams_pruned_total"].metrics, "no periodic flush within 5 s"
    m.rejected("internal")
    flusher.stop()
    assert fams["genrec_recommend_rejected_total"].metrics[0].values == [("increment", 1.0)], "stop flushes what is left"


def test_the_flusher_waits_for_a_gap_between_requests_but_not_forever():
    import time

    from genrec.ensemble.serving_metrics import MetricsFlusher

    fams, m = _families()
    flusher = MetricsFlusher(m, 0.02, max_wait_s=0.5).start()
    try:
        with flusher.request():
            m.record(_rec(1), None)
            time.sleep(0.2)  # several intervals: the flusher took the updates but must hold them
            assert _updates(fams) == 0, "an update was sent while a request was executing"
        deadline = time.monotonic() + 5
        while _updates(fams) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _updates(fams) > 0, "not sent once the request ended"
        with flusher.request():  # a request longer than max_wait_s: the buffer is sent anyway
            m.rejected("internal")
            time.sleep(1.0)
            assert fams["genrec_recommend_rejected_total"].metrics, "held past max_wait_s"
    finally:
        flusher.stop()
