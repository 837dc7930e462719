"""Overload on the default ``recommend`` (no bounded queue: Triton's default scheduler, see
bench/results/queue_policy.json): a flood of concurrent requests, each with a client deadline.
Every request is answered or fails at its deadline, nothing else; the requests whose callers gave
up while queued are skipped by the model (``genrec_recommend_rejected_total{reason="cancelled"}``),
so the backlog drains at once and the next request is answered promptly."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter

import numpy as np
import pytest

from genrec.runtime.triton_server import metrics_settle_s, scrape_metrics
from genrec.runtime.watchdog import CANARY_INPUTS

pytestmark = pytest.mark.integration
pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import aio as grpcaio  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

FLOOD = 200
DEADLINE_S = 1.0
HISTORY = {
    "history_items": np.arange(1, 6, dtype=np.int64),
    "history_actions": np.zeros(5, np.int64),
    "history_timestamps": np.arange(5, dtype=np.float64) * 60 + 1.7e9,
    "history_devices": np.zeros(5, np.int64),
}


def _cancelled(metrics_url: str) -> float:
    text = scrape_metrics(metrics_url, metrics_settle_s())
    return sum(float(v) for v in re.findall(r'genrec_recommend_rejected_total\{[^}]*reason="cancelled"[^}]*\} ([0-9.e+-]+)', text))


async def _flood(url: str) -> tuple[list[tuple[str, float]], tuple[str, float]]:
    client = grpcaio.InferenceServerClient(url)

    async def one(deadline_s: float) -> tuple[str, float]:
        inputs = []
        for name, dtype in CANARY_INPUTS:
            t = grpcaio.InferInput(name, list(HISTORY[name].shape), dtype)
            t.set_data_from_numpy(HISTORY[name])
            inputs.append(t)
        t0 = time.perf_counter()
        try:
            await client.infer("recommend", inputs, client_timeout=deadline_s)
            return "OK", time.perf_counter() - t0
        except InferenceServerException as e:
            return str(e.status() or e.message()), time.perf_counter() - t0

    try:
        flood = await asyncio.gather(*(one(DEADLINE_S) for _ in range(FLOOD)))
        return flood, await one(10.0)
    finally:
        await client.close()


def test_a_flood_with_deadlines_is_answered_or_given_up_and_leaves_no_backlog(tiny_triton):
    before = _cancelled(tiny_triton.metrics_url)
    results, (after, after_s) = asyncio.run(_flood(tiny_triton.grpc_url))
    codes = Counter(s.replace("StatusCode.", "") for s, _ in results)
    print(f"\nflood of {FLOOD} (deadline {DEADLINE_S} s): {dict(codes)}; next request {after} in {after_s * 1e3:.0f} ms")
    assert set(codes) <= {"OK", "DEADLINE_EXCEEDED"}, codes
    assert codes["OK"] > 0 and codes["DEADLINE_EXCEEDED"] > 0, codes  # more work than the deadline allows
    assert max(t for _, t in results) < DEADLINE_S + 0.5
    # the callers that gave up cost the model nothing: the next request is not queued behind them
    assert after == "OK" and after_s < 1.0, (after, after_s)
    assert _cancelled(tiny_triton.metrics_url) - before > 0
