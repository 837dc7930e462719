"""bench.profile_recommend's profiling path on the shared tiny Triton, in a few seconds, so it
cannot rot: the recommend stub is found under the server, py-spy samples it while requests
arrive, and the samples land in the pipeline's categories. Not performance claims."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from bench.open_loop import OpenLoop, RecommendTarget, load_workload
from bench.profile_recommend import MODEL_COMPUTE, profile, recommend_stub, summarize

pytestmark = pytest.mark.integration


def test_the_recommend_stub_is_profiled_under_load(tiny_run: Path, tiny_triton, tmp_path: Path):
    stub = recommend_stub(tiny_triton.proc.pid)
    gen = OpenLoop(lambda: RecommendTarget(tiny_triton.grpc_url), load_workload(tiny_run, 20))
    box: dict = {}
    try:
        t = threading.Thread(target=lambda: box.update(samples=profile(stub, 3, 200, tmp_path / "raw.txt")))
        t.start()
        gen.window(20, 3, warmup_s=0.5)
        t.join()
    finally:
        gen.close()
    s = summarize(box["samples"])
    assert s["samples"] > 20, s
    assert s["categories"].get(MODEL_COMPUTE, 0) > 0.02, s["categories"]  # the graphs ran in this process
    assert 0 < s["not_model_compute"] < 1 and s["top_frames"]
