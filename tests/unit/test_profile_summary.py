"""bench.profile_recommend's reading of py-spy's collapsed stacks (no server, no py-spy)."""

from __future__ import annotations

from bench.profile_recommend import BACKGROUND_METRICS, MODEL_COMPUTE, OTHER, STUB_NATIVE, category, parse_collapsed, summarize

RAW = """\
thread (11): MainThread;TritonPythonModel.execute (model.py:70);ServingPipeline.recommend (ensemble/serving_pipeline.py:60);Session.run (onnxruntime/capi/onnxruntime_inference_collection.py:220) 6
thread (11): MainThread;TritonPythonModel.execute (model.py:70);ServingPipeline.recommend (ensemble/serving_pipeline.py:61);MilvusIndex.search (ensemble/milvus_index.py:70);_blocking (grpc/_channel.py:1) 2
thread (11): MainThread 1
thread (12): genrec-metrics-flush;MetricsFlusher._run (ensemble/serving_metrics.py:205);ServingMetrics.flush (ensemble/serving_metrics.py:140) 1
garbage line
"""


def test_collapsed_stacks_are_parsed_root_first_with_counts():
    samples = parse_collapsed(RAW)
    assert [s.count for s in samples] == [6, 2, 1, 1]
    assert samples[0].frames[-1].startswith("Session.run") and samples[0].frames[0].startswith("thread (")


def test_a_sample_is_named_by_its_innermost_known_frame_and_its_thread():
    samples = parse_collapsed(RAW)
    assert category(samples[0].frames) == MODEL_COMPUTE  # not the pipeline that called it
    assert category(samples[1].frames).startswith("ANN search")
    assert category(samples[2].frames) == STUB_NATIVE
    assert category(samples[3].frames) == BACKGROUND_METRICS
    assert category(["thread (1): MainThread", "helper (somewhere/else.py:3)"]) == OTHER


def test_summary_shares_add_up_and_name_what_is_not_model_compute():
    s = summarize(parse_collapsed(RAW))
    assert s["samples"] == 10
    assert abs(sum(s["categories"].values()) - 1.0) < 1e-3
    assert s["categories"][MODEL_COMPUTE] == 0.6 and s["not_model_compute"] == 0.4
    assert s["top_frames"][0] == {
        "frame": "Session.run (onnxruntime/capi/onnxruntime_inference_collection.py)",
        "share": 0.6,
        "category": MODEL_COMPUTE,
    }
    assert summarize([])["samples"] == 0
