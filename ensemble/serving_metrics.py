"""Custom Prometheus metrics of the ``recommend`` model, declared once.

Triton exposes them on its metrics port (``:8002/metrics``) next to its own ``nv_*`` metrics.
The adapter passes a factory that makes ``pb_utils.MetricFamily`` objects; unit tests pass a
recording fake. Names follow Prometheus conventions: ``genrec_`` prefix, base units
(seconds), ``_total`` on counters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from genrec.ensemble.encoder_cache import CacheStats
from genrec.ensemble.request_types import Recommendation
from genrec.ensemble.serving_pipeline import STAGES

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
CANDIDATE_STAGES = ("generated", "candidates", "preranked", "returned")


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str
    doc: str
    buckets: tuple[float, ...] = ()


STAGE_SECONDS = MetricSpec(
    "genrec_recommend_stage_duration_seconds",
    HISTOGRAM,
    "Time spent in each stage of a recommend request (label stage)",
    (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
REQUEST_SECONDS = MetricSpec(
    "genrec_recommend_request_duration_seconds",
    HISTOGRAM,
    "Time of a whole recommend request inside the model",
    STAGE_SECONDS.buckets,
)
CANDIDATES = MetricSpec(
    "genrec_recommend_candidates",
    HISTOGRAM,
    "Candidates per request after each cascade stage (label stage: generated, candidates, preranked, returned)",
    (1, 10, 50, 100, 200, 500, 1000, 2000, 5000),
)
CACHE_HITS = MetricSpec("genrec_encoder_cache_hits_total", COUNTER, "Encoder state cache hits (a cached prefix of the history was reused)")
CACHE_MISSES = MetricSpec("genrec_encoder_cache_misses_total", COUNTER, "Encoder state cache misses (state rebuilt from the whole history)")
CACHE_EVICTIONS = MetricSpec("genrec_encoder_cache_evictions_total", COUNTER, "Encoder states evicted (LRU, byte cap)")
CACHE_ERRORS = MetricSpec("genrec_encoder_cache_errors_total", COUNTER, "Out-of-process state store unreachable (served as a miss)")
CACHE_BYTES = MetricSpec(
    "genrec_encoder_cache_bytes", GAUGE, "Bytes of encoder state held in this model instance's memory (absent when states live in Redis)"
)
CACHE_ENTRIES = MetricSpec(
    "genrec_encoder_cache_entries",
    GAUGE,
    "Users whose encoder state this model instance holds in memory (absent when states live in Redis)",
)
BEAMS_PRUNED = MetricSpec("genrec_beams_pruned_total", COUNTER, "Beam continuations masked by the catalogue trie or the excluded items")
REJECTED = MetricSpec("genrec_recommend_rejected_total", COUNTER, "Requests refused with an error (label reason)")
ANN_UNAVAILABLE = MetricSpec(
    "genrec_ann_unavailable_total", COUNTER, "Requests served from generation alone because the ANN index (Milvus) did not answer"
)

ALL = (
    STAGE_SECONDS,
    REQUEST_SECONDS,
    CANDIDATES,
    CACHE_HITS,
    CACHE_MISSES,
    CACHE_EVICTIONS,
    CACHE_ERRORS,
    CACHE_BYTES,
    CACHE_ENTRIES,
    BEAMS_PRUNED,
    REJECTED,
    ANN_UNAVAILABLE,
)

FamilyFactory = Callable[[MetricSpec], Any]  # spec -> object with .Metric(labels=..., [buckets=...])


class ServingMetrics:
    def __init__(self, make_family: FamilyFactory, labels: dict[str, str]) -> None:
        self.families = {s.name: make_family(s) for s in ALL}  # kept alive: metrics die with their family
        self.labels = labels
        self._metrics: dict[tuple[str, tuple], Any] = {}
        self._seen = CacheStats()
        self._ann_failures_seen = 0

    def _metric(self, spec: MetricSpec, **extra: str) -> Any:
        key = (spec.name, tuple(sorted(extra.items())))
        if key not in self._metrics:
            labels = {**self.labels, **extra}
            fam = self.families[spec.name]
            self._metrics[key] = (
                fam.Metric(labels=labels, buckets=list(spec.buckets)) if spec.kind == HISTOGRAM else fam.Metric(labels=labels)
            )
        return self._metrics[key]

    def record(self, rec: Recommendation, cache: CacheStats | None) -> None:
        for stage in STAGES:
            self._metric(STAGE_SECONDS, stage=stage).observe(rec.stage_ms[stage] / 1e3)
        self._metric(REQUEST_SECONDS).observe(sum(rec.stage_ms.values()) / 1e3)
        for stage in CANDIDATE_STAGES:
            self._metric(CANDIDATES, stage=stage).observe(float(rec.stage_counts[stage]))
        self._metric(BEAMS_PRUNED).increment(float(rec.stage_counts["beams_pruned"]))
        if cache is not None:
            for spec, now, before in (
                (CACHE_HITS, cache.hits, self._seen.hits),
                (CACHE_MISSES, cache.misses, self._seen.misses),
                (CACHE_EVICTIONS, cache.evictions, self._seen.evictions),
                (CACHE_ERRORS, cache.errors, self._seen.errors),
            ):
                if now > before:
                    self._metric(spec).increment(float(now - before))
            if cache.bytes is not None and cache.entries is not None:  # in-process store only
                self._metric(CACHE_BYTES).set(float(cache.bytes))
                self._metric(CACHE_ENTRIES).set(float(cache.entries))
            self._seen = CacheStats(cache.hits, cache.misses, cache.evictions, cache.bytes, cache.entries, cache.errors)

    def ann_failures(self, total: int) -> None:
        """The ANN index's failed searches so far (``FailSoftIndex.failures``), counted once each."""
        if total > self._ann_failures_seen:
            self._metric(ANN_UNAVAILABLE).increment(float(total - self._ann_failures_seen))
            self._ann_failures_seen = total

    def rejected(self, reason: str) -> None:
        self._metric(REJECTED, reason=reason).increment(1.0)
