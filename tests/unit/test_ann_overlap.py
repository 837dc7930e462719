"""The ANN search overlapping the beam search (``serving.ann_concurrent``): truly concurrent, the
same result as one after the other, and no search outliving a request that failed."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest

from genrec.ensemble.serving_pipeline import timed_recommendation


def _stages(generate_waits_for: threading.Event | None = None, fail: bool = False, search_s: float = 0.0):
    searched = threading.Event()
    log: list[str] = []

    def encode(req):
        return SimpleNamespace(user=np.ones(4, np.float32), memory_logw=np.zeros(3)), "off"

    def generate(enc, req):
        if generate_waits_for is not None:
            assert generate_waits_for.wait(5.0), "the search never ran while the beam search did"
        if fail:
            raise RuntimeError("decoder failed")
        log.append("generated")
        return SimpleNamespace(items=np.array([1, 2, 3])), 0

    def retrieve(user, req):
        if generate_waits_for is not None:
            generate_waits_for.set()
        time.sleep(search_s)
        log.append("searched")
        searched.set()
        return np.array([7, 8])

    def prerank(gen, enc, user, ann, req):
        items = np.concatenate([gen.items, ann])
        return SimpleNamespace(candidates=items, kept=np.arange(items.size), items=items)

    def rank(trace, k):
        return trace.items[:k], np.arange(k, dtype=np.float32)

    return (encode, generate, retrieve, prerank, rank), searched, log


REQ = SimpleNamespace(options=SimpleNamespace(final_k=4))


def test_the_search_runs_while_the_beam_search_does_and_gives_the_same_result():
    started = threading.Event()
    stages, _, _ = _stages(generate_waits_for=started)  # deadlocks (fails after 5 s) if sequential
    with ThreadPoolExecutor(1) as pool:
        overlapped = timed_recommendation(REQ, *stages, submit=pool.submit)
    sequential = timed_recommendation(REQ, *_stages()[0])
    assert np.array_equal(overlapped.items, sequential.items) and overlapped.stage_counts == sequential.stage_counts
    assert set(overlapped.stage_ms) == {"encode", "generate", "retrieve", "prerank", "rank"}


def test_the_search_is_timed_on_its_own_thread():
    stages, _, _ = _stages(search_s=0.05)
    with ThreadPoolExecutor(1) as pool:
        rec = timed_recommendation(REQ, *stages, submit=pool.submit)
    assert rec.stage_ms["retrieve"] >= 50.0 and rec.stage_ms["prerank"] < 50.0


def test_a_failed_beam_search_waits_for_its_search_before_raising():
    stages, searched, log = _stages(fail=True, search_s=0.05)
    with ThreadPoolExecutor(1) as pool:
        with pytest.raises(RuntimeError, match="decoder failed"):
            timed_recommendation(REQ, *stages, submit=pool.submit)
        # the search was either cancelled before it started or finished: none is left running
        assert searched.is_set() or not log
