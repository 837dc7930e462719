"""The target-aware pre-ranker end to end on the published `tiny` run: the exported graph against
the PyTorch module (the publish gate's parity), the serving path on the ONNX graphs against the
PyTorch reference with ``pipeline.prerank = "target_attention"``, and a version published without
the graph still serving with the dot pre-rank.

Tolerances: pre-rank scores 1e-4 (the graph's own parity bound, fp32 rounding; the encoder memory
they attend to differs by the encoder graph's ~1e-6); ranker scores 1e-3 as in
test_serving_pipeline.py."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from genrec.data.split import leave_last_out
from genrec.ensemble.serving_setup import SERVING_FILE, build_pipeline, load_setup
from genrec.evaluate import dataset_of
from genrec.exporters.publish import version_numbers
from genrec.heldout import heldout_requests
from genrec.reference import ReferencePipeline

pytestmark = pytest.mark.integration
N_USERS = 20
TARGET = {"GENREC_SERVING__ANN": "exact", "GENREC_PIPELINE__PRERANK": "target_attention"}


def _latest(repo, model):
    return repo / model / str(version_numbers(repo / model)[-1])


@pytest.fixture(scope="module")
def requests_(tiny_bundle):
    ds = dataset_of(tiny_bundle)
    split = leave_last_out(ds.events)
    reqs, _ = heldout_requests(ds, split, split.eligible_users[:N_USERS], tiny_bundle.cfg.pipeline)
    return reqs


def test_published_graph_passed_its_parity_gate(tiny_repository):
    manifest = json.loads((_latest(tiny_repository, "target_prerank") / "manifest.json").read_text())
    assert manifest["parity"]["ok"] and manifest["parity"]["max_abs_err"] <= 1e-4, manifest["parity"]
    assert "target_prerank" in json.loads((_latest(tiny_repository, "recommend") / SERVING_FILE).read_text())["pinned_versions"]


def test_serving_target_prerank_on_onnx_matches_the_reference(tiny_repository, tiny_bundle, requests_):
    serving = build_pipeline(load_setup(_latest(tiny_repository, "recommend"), environ=TARGET))
    ref = ReferencePipeline(tiny_bundle, prerank="target_attention")
    assert serving.prerank_mode == ref.prerank_mode == "target_attention"
    same, worst = 0, 0.0
    for i, r in enumerate(requests_):
        enc, _ = serving.encode(r)
        gen, _ = serving.generate(enc, r)
        got = serving.prerank(gen, enc, enc.user, serving.retrieve(enc.user, r), r)
        renc = ref.encode([r])
        rgen, _ = ref.generate(renc, [r])
        ruser = renc.user[0].numpy()
        want = ref.cascade(rgen[0], renc, ruser, ref.retrieve(ruser[None], [r])[0], r)
        if np.array_equal(got.candidates.items, want.candidates.items):
            worst = max(worst, float(np.abs(got.prerank - want.prerank).max()))
            same += np.array_equal(got.kept, want.kept)
        w, g = ref.recommend(r), serving.recommend(r)
        np.testing.assert_allclose(g.scores, w.scores, atol=1e-3, err_msg=f"user {i}: k-th best scores differ")
    assert worst <= 1e-4, f"pre-rank scores differ by {worst}"
    assert same >= 0.95 * len(requests_), f"only {same}/{len(requests_)} users keep the reference's 100"


def test_a_version_without_the_graph_serves_the_dot_prerank(tiny_repository, tiny_bundle, requests_, tmp_path):
    """A recommend version published before the target pre-ranker existed: its serving.json pins
    four graphs and its config has no pipeline.prerank. It loads and pre-ranks by dot, even when
    the environment asks for target_attention."""
    old = tmp_path / "recommend" / "1"
    shutil.copytree(_latest(tiny_repository, "recommend"), old)
    d = json.loads((old / SERVING_FILE).read_text())
    d["pinned_versions"].pop("target_prerank")
    for key in ("prerank", "prerank_microbatch"):
        d["config"]["pipeline"].pop(key)
    (old / SERVING_FILE).write_text(json.dumps(d))
    setup = load_setup(old, environ=TARGET, repository=tiny_repository)
    assert "target_prerank" not in setup.outputs()  # no session or BLS call for a graph the version does not pin
    serving = build_pipeline(setup)
    assert serving.prerank_mode == "dot"
    ref = ReferencePipeline(tiny_bundle, prerank="dot")
    for r in requests_[:5]:
        np.testing.assert_allclose(serving.recommend(r).scores, ref.recommend(r).scores, atol=1e-3)
