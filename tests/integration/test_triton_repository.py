"""The real Triton Inference Server (pip runtime) on a repository published from a `tiny` run.

Parity tolerances: the served ONNX graphs are compared with the PyTorch / LightGBM sources at
1e-3 absolute (fp32 re-association in onnxruntime's fused kernels; the exporter's own parity on
these graphs is ~1e-6).
"""

from __future__ import annotations

import shutil
import threading
import time

import numpy as np
import pytest
import torch

from genrec.contracts import all_contracts, ranker_contract
from genrec.ensemble.ranking_features import N_FEATURES
from genrec.exporters.pbtxt import render
from genrec.exporters.publish import PublishError, publish_file, publish_run, rollback, version_numbers

pytestmark = pytest.mark.integration
tritonclient_http = pytest.importorskip("tritonclient.http")
tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
TOL = 1e-3


def _inputs(module, feeds: dict[str, np.ndarray], contract) -> list:
    out = []
    for t in contract.inputs:
        arr = feeds[t.name]
        x = module.InferInput(t.name, list(arr.shape), t.dtype)
        x.set_data_from_numpy(arr)
        out.append(x)
    return out


def _infer(triton, model: str, feeds: dict[str, np.ndarray], cfg, protocol: str = "http"):
    contract = next(c for c in all_contracts(cfg) if c.name == model)
    if protocol == "grpc":
        client = tritonclient_grpc.InferenceServerClient(triton.grpc_url)
        res = client.infer(model, _inputs(tritonclient_grpc, feeds, contract))
    else:
        client = tritonclient_http.InferenceServerClient(triton.http_url)
        res = client.infer(model, _inputs(tritonclient_http, feeds, contract))
    return [res.as_numpy(t.name) for t in contract.outputs], res


def test_every_model_is_ready_with_its_generated_config(triton, repository, tiny_bundle):
    client = tritonclient_http.InferenceServerClient(triton.http_url)
    for c in all_contracts(tiny_bundle.cfg):
        assert client.is_model_ready(c.name), c.name
        assert (repository / c.name / "config.pbtxt").read_text() == render(c)
        meta = client.get_model_metadata(c.name)
        assert [i["name"] for i in meta["inputs"]] == [t.name for t in c.inputs]
        assert meta["platform"] == "onnxruntime_onnx"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_models_match_the_pytorch_reference(triton, tiny_bundle, protocol):
    from genrec.data.split import leave_last_out
    from genrec.evaluate import dataset_of
    from genrec.exporters.graphs import DecoderCrossKVGraph, DecoderStepGraph, EncoderBlockGraph
    from genrec.exporters.onnx_export import encoder_cases
    from genrec.heldout import heldout_requests
    from genrec.reference import ReferencePipeline

    b = tiny_bundle
    ds = dataset_of(b)
    split = leave_last_out(ds.events)
    reqs, _ = heldout_requests(ds, split, split.eligible_users[10:14], b.cfg.pipeline)
    enc_g = EncoderBlockGraph(b.encoder).eval()
    names = [t.name for t in all_contracts(b.cfg)[0].inputs]
    for feeds in encoder_cases(b, [r.history for r in reqs], seed=5):
        got, _ = _infer(triton, "ugt_encoder", feeds, b.cfg, protocol)
        with torch.no_grad():
            want = enc_g(*(torch.from_numpy(feeds[n]) for n in names))
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w.numpy(), atol=TOL)

    pipe = ReferencePipeline(b)
    enc = pipe.encode(reqs[:2])
    (ck, cv), _ = _infer(triton, "decoder_cross_kv", {"memory": enc.memory.numpy()}, b.cfg, protocol)
    with torch.no_grad():
        wk, wv = DecoderCrossKVGraph(b.decoder)(enc.memory)
    np.testing.assert_allclose(ck, wk.numpy(), atol=TOL)
    dc = b.cfg.decoder
    dh = dc.d_model // dc.n_heads
    step_g = DecoderStepGraph(b.decoder).eval()
    feeds = {
        "step": np.array([1], np.int64),
        "codes": np.array([[1, 2, 3], [0, 4, 5]], np.int64),
        "parents": np.zeros((2, 3), np.int64),
        "past_k": np.random.default_rng(0).normal(size=(dc.n_layers, 2, 1, dc.n_heads, 1, dh)).astype(np.float32),
        "past_v": np.random.default_rng(1).normal(size=(dc.n_layers, 2, 1, dc.n_heads, 1, dh)).astype(np.float32),
        "cross_k": ck,
        "cross_v": cv,
        "cross_bias": enc.memory_logw.numpy(),
    }
    got, _ = _infer(triton, "decoder_step", feeds, b.cfg, protocol)
    with torch.no_grad():
        want = step_g(*(torch.from_numpy(feeds[t.name]) for t in all_contracts(b.cfg)[2].inputs))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), atol=TOL)

    _, traces = pipe.traces(reqs[:1])
    (score,), _ = _infer(triton, "ranker", {"features": traces[0].features}, b.cfg, protocol)
    np.testing.assert_allclose(score[:, 0], b.ranker.predict(traces[0].features), atol=TOL)


def test_bad_inputs_get_a_kserve_error_naming_the_input(triton, tiny_bundle):
    client = tritonclient_http.InferenceServerClient(triton.http_url)
    wrong_dtype = tritonclient_http.InferInput("features", [3, N_FEATURES], "FP64")
    wrong_dtype.set_data_from_numpy(np.zeros((3, N_FEATURES), np.float64))
    with pytest.raises(tritonclient_http.InferenceServerException, match="features"):
        client.infer("ranker", [wrong_dtype])
    wrong_shape = tritonclient_http.InferInput("features", [3, N_FEATURES - 1], "FP32")
    wrong_shape.set_data_from_numpy(np.zeros((3, N_FEATURES - 1), np.float32))
    with pytest.raises(tritonclient_http.InferenceServerException, match="features"):
        client.infer("ranker", [wrong_shape])
    over_cap = tritonclient_http.InferInput("features", [5000, N_FEATURES], "FP32")  # max_batch_size 1024
    over_cap.set_data_from_numpy(np.zeros((5000, N_FEATURES), np.float32))
    with pytest.raises(tritonclient_http.InferenceServerException, match="batch"):
        client.infer("ranker", [over_cap])
    ok = tritonclient_http.InferInput("features", [2, N_FEATURES], "FP32")
    ok.set_data_from_numpy(np.zeros((2, N_FEATURES), np.float32))
    assert client.infer("ranker", [ok]).as_numpy("score").shape == (2, 1)  # still serving


def test_a_direct_graph_call_over_a_contract_cap_is_refused(triton, tiny_bundle):
    """The caps in the generated config are enforced by the pip runtime's backend, not comments."""
    dc = tiny_bundle.cfg.decoder
    dh = dc.d_model // dc.n_heads
    beams = tiny_bundle.cfg.pipeline.max_beam_width + 1
    past = np.zeros((dc.n_layers, 1, beams, dc.n_heads, 1, dh), np.float32)
    cross = np.zeros((dc.n_layers, 1, dc.n_heads, 4, dh), np.float32)
    feeds = {
        "step": np.array([1], np.int64),
        "codes": np.zeros((1, beams), np.int64),
        "parents": np.zeros((1, beams), np.int64),
        "past_k": past,
        "past_v": past,
        "cross_k": cross,
        "cross_v": cross,
        "cross_bias": np.zeros((1, 4), np.float32),
    }
    with pytest.raises(tritonclient_http.InferenceServerException, match=f"'codes': dim 1 is {beams}, over the cap"):
        _infer(triton, "decoder_step", feeds, tiny_bundle.cfg)
    client = tritonclient_http.InferenceServerClient(triton.http_url)
    assert client.is_model_ready("decoder_step")


class LoadLoop:
    """Requests to the ranker in a loop on another thread; counts failures and versions seen."""

    def __init__(self, url: str) -> None:
        self.client = tritonclient_http.InferenceServerClient(url)
        self.failures: list[str] = []
        self.versions: list[str] = []
        self.stop = threading.Event()
        x = tritonclient_http.InferInput("features", [100, N_FEATURES], "FP32")
        x.set_data_from_numpy(np.random.default_rng(0).normal(size=(100, N_FEATURES)).astype(np.float32))
        self.inp = x
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                res = self.client.infer("ranker", [self.inp])
                self.versions.append(res.get_response()["model_version"])
            except Exception as e:  # noqa: BLE001 - every failure counts
                self.failures.append(str(e))

    def __enter__(self) -> LoadLoop:
        self.thread.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.5)
        self.stop.set()
        self.thread.join(10)


def test_publish_and_rollback_under_load_lose_no_request(triton, repository, tiny_run, tiny_bundle):
    before = version_numbers(repository / "ranker")[-1]
    with LoadLoop(triton.http_url) as loop:
        published = publish_run(tiny_run, repository, triton_url=triton.http_url, progress=lambda m: None)
        new = next(p.version for p in published if p.model == "ranker")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not loop.versions or loop.versions[-1] != str(new)):
            time.sleep(0.2)
    assert new == before + 1
    assert not loop.failures, loop.failures[:3]
    assert str(before) in loop.versions and loop.versions[-1] == str(new)  # N served until N+1 took over

    with LoadLoop(triton.http_url) as loop:
        serving = rollback(repository, "ranker", triton.http_url)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and loop.versions[-1] != str(serving):
            time.sleep(0.2)
    assert serving == before
    assert not loop.failures, loop.failures[:3]
    assert loop.versions[-1] == str(before)
    assert (repository.parent / f".{repository.name}.retired" / "ranker").exists()  # retired, not deleted


@pytest.fixture
def ranker_copy(triton, repository, tiny_bundle, request):
    """A copy of the ranker's model folder under its own name, loaded: broken-model tests break
    the copy, never the folder the other tests serve from."""
    from dataclasses import replace

    from genrec.exporters.publish import load

    c = replace(ranker_contract(tiny_bundle.cfg), name=f"ranker_copy_{request.node.name[-12:].strip('_')}")
    folder = repository / c.name
    shutil.copytree(repository / "ranker", folder)
    (folder / "config.pbtxt").write_text(render(c))
    load(triton.http_url, c.name)
    return c


def _score_one(triton, model: str):
    client = tritonclient_http.InferenceServerClient(triton.http_url)
    x = tritonclient_http.InferInput("features", [1, N_FEATURES], "FP32")
    x.set_data_from_numpy(np.zeros((1, N_FEATURES), np.float32))
    return client.infer(model, [x])


def test_broken_publishes_are_refused_and_serving_is_untouched(triton, repository, ranker_copy, tmp_path):
    c = ranker_copy
    versions_before = version_numbers(repository / c.name)
    good = repository / c.name / str(versions_before[-1]) / "model.onnx"
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(PublishError, match="does not load"):
        publish_file(repository, c, truncated, {}, triton.http_url)
    wrong_graph = repository / "decoder_cross_kv" / "1" / "model.onnx"
    with pytest.raises(PublishError, match="do not match the contract"):
        publish_file(repository, c, wrong_graph, {}, triton.http_url)
    with pytest.raises(PublishError, match="parity"):
        publish_file(repository, c, good, {"parity": {"ok": False, "max_abs_err": 1.0, "tolerance": 1e-4}}, triton.http_url)
    # a repository config that disagrees with the model's contract (the copy's, not the served ranker's)
    cfg_file = repository / c.name / "config.pbtxt"
    cfg_file.write_text(cfg_file.read_text().replace("max_batch_size: 1024", "max_batch_size: 8"))
    with pytest.raises(PublishError, match="does not match"):
        publish_file(repository, c, good, {}, triton.http_url)
    assert version_numbers(repository / c.name) == versions_before
    assert _score_one(triton, c.name).get_response()["model_version"] == str(versions_before[-1])
    assert _score_one(triton, "ranker").as_numpy("score").shape == (1, 1)  # the shared model never noticed


def test_a_version_that_fails_to_load_leaves_the_old_one_serving(triton, repository, ranker_copy, tmp_path, monkeypatch):
    """An ONNX file that passes the local checks but fails in Triton is retired again."""
    import genrec.exporters.publish as pub

    c = ranker_copy
    versions_before = version_numbers(repository / c.name)
    staged = tmp_path / "model.onnx"
    shutil.copy2(repository / c.name / str(versions_before[-1]) / "model.onnx", staged)
    cfg_file = repository / c.name / "config.pbtxt"
    good_config = cfg_file.read_text()
    # same tensors, but the backend is made to refuse it: the copy's config names a missing output
    # after the local config check has passed
    monkeypatch.setattr(
        pub, "check_config", lambda model_dir, contract: cfg_file.write_text(good_config.replace('name: "score"', 'name: "score_missing"'))
    )
    with pytest.raises(PublishError, match="refused to load"):
        publish_file(repository, c, staged, {}, triton.http_url)
    assert version_numbers(repository / c.name) == versions_before
    cfg_file.write_text(good_config)
    pub.load(triton.http_url, c.name)
    assert _score_one(triton, c.name).get_response()["model_version"] == str(versions_before[-1])


def test_int8_is_a_publishable_option_checked_against_fp32(tiny_run, tmp_path):
    import json

    repo = tmp_path / "model_repository"
    publish_run(tiny_run, repo, progress=lambda m: None, int8=True)
    for model in ("ugt_encoder", "decoder_cross_kv", "decoder_step"):
        manifest = json.loads((repo / model / "1" / "manifest.json").read_text())
        assert manifest["parity"]["int8"] is True
        assert 0 < manifest["parity"]["max_abs_err_vs_fp32"] <= manifest["parity"]["tolerance"]
    assert "int8" not in json.loads((repo / "ranker" / "1" / "manifest.json").read_text())["parity"]
