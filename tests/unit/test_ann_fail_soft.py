"""Milvus failing at run time: ``recommend`` is served from generation alone (no neighbours,
counted), and the index is rebuilt once the retry time has passed."""

from __future__ import annotations

import numpy as np
import pytest

from genrec.ensemble.retrieval import ExactIndex, FailSoftIndex, search_excluding
from genrec.ensemble.serving_metrics import ANN_UNAVAILABLE, ServingMetrics

VECTORS = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)


class Flaky:
    def __init__(self) -> None:
        self.down = False
        self.inner = ExactIndex(VECTORS)

    def search(self, vectors, k):
        if self.down:
            raise ConnectionError("milvus-lite process is gone")
        return self.inner.search(vectors, k)


def test_a_failing_index_answers_no_neighbours_counts_and_is_rebuilt_after_the_retry_time():
    now = [0.0]
    built: list[Flaky] = []

    def make() -> Flaky:
        if built and built[-1].down and now[0] < 10:
            raise ConnectionError("still down")
        built.append(Flaky())
        return built[-1]

    ann = FailSoftIndex(make, retry_s=5.0, clock=lambda: now[0], spawn=lambda job: job())
    q = VECTORS[:1]
    assert len(search_excluding(ann, q, 5, [None])[0]) == 5
    built[-1].down = True
    assert search_excluding(ann, q, 5, [None])[0].size == 0, "no neighbours: generation alone"
    now[0] = 3.0
    assert search_excluding(ann, q, 5, [None])[0].size == 0 and len(built) == 1, "no rebuild before retry_s"
    now[0] = 6.0
    assert search_excluding(ann, q, 5, [None])[0].size == 0, "the rebuild fails while Milvus is down"
    now[0] = 12.0
    assert len(search_excluding(ann, q, 5, [None])[0]) == 5 and len(built) == 2, "rebuilt once Milvus answers"
    assert ann.failures == 3


def test_an_index_that_cannot_be_built_at_load_fails_the_load_after_its_attempts():
    tries = []

    def make():
        tries.append(1)
        raise ConnectionError("no milvus")

    with pytest.raises(ConnectionError):
        FailSoftIndex(make, build_attempts=3, sleep=lambda s: None)
    assert len(tries) == 3


def test_a_first_build_that_fails_once_is_retried():
    tries = []

    def make():
        tries.append(1)
        if len(tries) == 1:
            raise RuntimeError("Mmap manager has not been init")
        return ExactIndex(VECTORS)

    ann = FailSoftIndex(make, sleep=lambda s: None)
    assert len(tries) == 2 and len(search_excluding(ann, VECTORS[:1], 3, [None])[0]) == 3


def test_the_failures_become_a_counter():
    counted: list[float] = []

    class Fam:
        def __init__(self, spec):
            self.spec = spec

        def Metric(self, labels, buckets=None):  # noqa: N802 (pb_utils' spelling)
            fam = self

            class M:
                def increment(self, v):
                    if fam.spec is ANN_UNAVAILABLE:
                        counted.append(v)

            return M()

    m = ServingMetrics(Fam, {})
    for total in (0, 3, 3, 4):  # the index's running count, read after each request
        m.ann_failures(total)
        m.flush()
    assert counted == [3.0, 1.0]


def test_a_failed_index_is_closed_before_it_is_rebuilt():
    """A killed milvus-lite server stays registered in its process until the failed index is closed:
    without the close every rebuild would reconnect to the dead server's socket."""
    closed: list[bool] = []

    class Closing(Flaky):
        def close(self) -> None:
            closed.append(True)
            raise ConnectionError("closing a dead connection fails too")

    built: list[Closing] = []

    def make() -> Closing:
        built.append(Closing())
        return built[-1]

    now = [0.0]
    ann = FailSoftIndex(make, retry_s=5.0, clock=lambda: now[0], spawn=lambda job: job())
    built[-1].down = True
    assert search_excluding(ann, VECTORS[:1], 5, [None])[0].size == 0
    assert closed == [True] and ann.index is None, "the failing index is released even when its close raises"
    now[0] = 6.0
    assert len(search_excluding(ann, VECTORS[:1], 5, [None])[0]) == 5 and len(built) == 2


def test_an_index_rebuilt_after_close_is_closed_not_leaked_and_a_hung_rebuild_is_retried():
    closed: list[int] = []
    jobs: list = []

    class Closing(Flaky):
        def close(self) -> None:
            closed.append(id(self))

    built: list[Closing] = []

    def make() -> Closing:
        built.append(Closing())
        return built[-1]

    now = [0.0]
    ann = FailSoftIndex(make, retry_s=5.0, clock=lambda: now[0], spawn=jobs.append)  # rebuilds run when the test says
    built[-1].down = True
    assert search_excluding(ann, VECTORS[:1], 5, [None])[0].size == 0
    now[0] = 6.0
    search_excluding(ann, VECTORS[:1], 5, [None])
    assert len(jobs) == 1, "a rebuild was started"
    now[0] = 12.0
    search_excluding(ann, VECTORS[:1], 5, [None])
    assert len(jobs) == 1, "no second rebuild while one runs"
    now[0] = 6.0 + ann.rebuild_timeout_s + 1
    search_excluding(ann, VECTORS[:1], 5, [None])
    assert len(jobs) == 2, "a rebuild that hangs past its timeout does not stop the retries"
    ann.close()
    jobs[0]()  # the hung rebuild finishes after the model was unloaded
    assert ann.index is None and id(built[-1]) in closed, "closed, not leaked"
