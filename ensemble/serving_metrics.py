"""Custom Prometheus metrics of the ``recommend`` model, declared once.

Triton exposes them on its metrics port (``:8002/metrics``) next to its own ``nv_*`` metrics.
The adapter passes a factory that makes ``pb_utils.MetricFamily`` objects; unit tests pass a
recording fake. Names follow Prometheus conventions: ``genrec_`` prefix, base units
(seconds), ``_total`` on counters.

Recording is off the request path: a request only appends to an in-memory buffer, and
``MetricsFlusher`` hands the buffer to the families from a background thread every
``serving.metrics_flush_s``, one update at a time between requests. Each family update is a synchronous round trip from the Python
backend's stub to the server process; made inline (~14 per request) they cost a lightly loaded
server more than a busy one (its threads must be woken for each), which made p50 fall as load
rose (bench/README.md). Counters and gauges are coalesced per flush; histogram observations
cannot be (the API takes one value per call), so they are replayed one by one, off the path.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


MetricKey = tuple[MetricSpec, tuple[tuple[str, str], ...]]  # spec and its extra labels, sorted
OBSERVE, INCREMENT, SET = "observe", "increment", "set"  # the families' method names


@dataclass(frozen=True)
class Update:
    key: MetricKey
    op: str  # OBSERVE, INCREMENT or SET
    value: float


class ServingMetrics:
    """Buffers a request's metric updates in memory; ``flush`` sends them to the families."""

    def __init__(self, make_family: FamilyFactory, labels: dict[str, str]) -> None:
        self.families = {s.name: make_family(s) for s in ALL}  # kept alive: metrics die with their family
        self.labels = labels
        self._metrics: dict[MetricKey, Any] = {}
        self._seen = CacheStats()
        self._ann_failures_seen = 0
        self._lock = threading.Lock()  # requests append, the flusher thread swaps the buffers out
        self._observed: defaultdict[MetricKey, list[float]] = defaultdict(list)
        self._increments: defaultdict[MetricKey, float] = defaultdict(float)
        self._gauges: dict[MetricKey, float] = {}

    def _metric(self, key: MetricKey) -> Any:
        if key not in self._metrics:
            spec, extra = key
            labels = {**self.labels, **dict(extra)}
            fam = self.families[spec.name]
            self._metrics[key] = (
                fam.Metric(labels=labels, buckets=list(spec.buckets)) if spec.kind == HISTOGRAM else fam.Metric(labels=labels)
            )
        return self._metrics[key]

    def _observe(self, spec: MetricSpec, value: float, **extra: str) -> None:
        self._observed[(spec, tuple(sorted(extra.items())))].append(value)

    def _increment(self, spec: MetricSpec, value: float, **extra: str) -> None:
        self._increments[(spec, tuple(sorted(extra.items())))] += value

    def _set(self, spec: MetricSpec, value: float) -> None:
        self._gauges[(spec, ())] = value

    def take(self) -> list[Update]:
        """What was recorded since the last take, as family updates (counters and gauges coalesced)."""
        with self._lock:
            observed, self._observed = self._observed, defaultdict(list)
            increments, self._increments = self._increments, defaultdict(float)
            gauges, self._gauges = self._gauges, {}
        updates = [Update(key, OBSERVE, v) for key, values in observed.items() for v in values]
        updates += [Update(key, INCREMENT, total) for key, total in increments.items() if total]
        updates += [Update(key, SET, value) for key, value in gauges.items()]
        return updates

    def send(self, update: Update) -> None:
        """One family update: a round trip to the Triton server process."""
        getattr(self._metric(update.key), update.op)(update.value)

    def flush(self) -> int:
        """Send everything recorded since the last flush at once; returns the number of updates."""
        updates = self.take()
        for u in updates:
            self.send(u)
        return len(updates)

    def record(self, rec: Recommendation, cache: CacheStats | None) -> None:
        with self._lock:
            self._record(rec, cache)

    def _record(self, rec: Recommendation, cache: CacheStats | None) -> None:
        for stage in STAGES:
            self._observe(STAGE_SECONDS, rec.stage_ms[stage] / 1e3, stage=stage)
        self._observe(REQUEST_SECONDS, sum(rec.stage_ms.values()) / 1e3)
        for stage in CANDIDATE_STAGES:
            self._observe(CANDIDATES, float(rec.stage_counts[stage]), stage=stage)
        self._increment(BEAMS_PRUNED, float(rec.stage_counts["beams_pruned"]))
        if cache is not None:
            for spec, now, before in (
                (CACHE_HITS, cache.hits, self._seen.hits),
                (CACHE_MISSES, cache.misses, self._seen.misses),
                (CACHE_EVICTIONS, cache.evictions, self._seen.evictions),
                (CACHE_ERRORS, cache.errors, self._seen.errors),
            ):
                if now > before:
                    self._increment(spec, float(now - before))
            if cache.bytes is not None and cache.entries is not None:  # in-process store only
                self._set(CACHE_BYTES, float(cache.bytes))
                self._set(CACHE_ENTRIES, float(cache.entries))
            self._seen = CacheStats(cache.hits, cache.misses, cache.evictions, cache.bytes, cache.entries, cache.errors)

    def ann_failures(self, total: int) -> None:
        """The ANN index's failed searches so far (``FailSoftIndex.failures``), counted once each."""
        with self._lock:
            if total > self._ann_failures_seen:
                self._increment(ANN_UNAVAILABLE, float(total - self._ann_failures_seen))
                self._ann_failures_seen = total

    def rejected(self, reason: str) -> None:
        with self._lock:
            self._increment(REJECTED, 1.0, reason=reason)


class MetricsFlusher:
    """Sends a ``ServingMetrics``' updates from a daemon thread, between requests.

    Every ``interval_s`` it takes what was recorded and sends it one update at a time, each only
    while no request is executing (``request()`` marks one): an update's round trip to the server
    process holds the Python lock, so a whole flush sent at once would stall a request that
    arrives meanwhile (measured: p99.9 58 ms at 30 req/s against 25 ms inline). Under load with no
    gap for ``max_wait_s``, the rest is sent anyway, so the buffer stays bounded. ``stop()`` sends
    what is left.
    """

    def __init__(
        self,
        metrics: ServingMetrics,
        interval_s: float,
        on_error: Callable[[BaseException], None] = lambda e: None,
        max_wait_s: float | None = None,
    ) -> None:
        self.metrics, self.interval_s, self.on_error = metrics, interval_s, on_error
        self.max_wait_s = 5 * interval_s if max_wait_s is None else max_wait_s
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._in_flight = 0
        self._count_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="genrec-metrics-flush", daemon=True)

    def start(self) -> MetricsFlusher:
        self._thread.start()
        return self

    @contextmanager
    def request(self) -> Iterator[None]:
        """Marks a request executing: no update is sent meanwhile."""
        with self._count_lock:
            self._in_flight += 1
            self._idle.clear()
        try:
            yield
        finally:
            with self._count_lock:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._idle.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._flush(between_requests=True)

    def _flush(self, between_requests: bool) -> None:
        deadline = time.monotonic() + self.max_wait_s
        try:
            for u in self.metrics.take():
                if between_requests:
                    self._idle.wait(max(0.0, deadline - time.monotonic()))
                self.metrics.send(u)
        except Exception as e:  # a failed update must not end the thread: that batch is dropped, the next goes on
            self.on_error(e)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=max(1.0, 2 * self.interval_s + self.max_wait_s))
        self._flush(between_requests=False)
