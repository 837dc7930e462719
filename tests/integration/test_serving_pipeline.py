"""The serving pipeline on the published ONNX graphs, in process (no Triton), against the PyTorch
reference: the claim the Triton tests rest on, checked without a server in between.

Tolerance 1e-3 on ranker scores: the graphs are fp32 exports whose own parity is ~1e-6, and the
ranker's score moves by far less than that for the same features."""

from __future__ import annotations

import numpy as np
import pytest

from genrec.data.split import leave_last_out
from genrec.ensemble.serving_setup import build_pipeline, load_setup
from genrec.evaluate import dataset_of
from genrec.exporters.publish import publish_run, version_numbers
from genrec.heldout import heldout_requests
from genrec.reference import ReferencePipeline

pytestmark = pytest.mark.integration
N_USERS = 60


@pytest.fixture(scope="module")
def serving(tiny_run, tmp_path_factory):
    repo = tmp_path_factory.mktemp("inproc") / "model_repository"
    publish_run(tiny_run, repo, progress=lambda m: None)
    version = repo / "recommend" / str(version_numbers(repo / "recommend")[-1])
    setup = load_setup(version, environ={"GENREC_SERVING__ANN": "exact"})
    return build_pipeline(setup)


def test_serving_pipeline_on_onnx_matches_the_reference_in_process(serving, tiny_bundle):
    ds = dataset_of(tiny_bundle)
    split = leave_last_out(ds.events)
    reqs, _ = heldout_requests(ds, split, split.eligible_users[:N_USERS], tiny_bundle.cfg.pipeline)
    ref = ReferencePipeline(tiny_bundle)
    same = 0
    for i, r in enumerate(reqs):
        want, got = ref.recommend(r), serving.recommend(r)
        same += np.array_equal(want.items, got.items)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-3, err_msg=f"user {i}: k-th best scores differ")
        _, gi, wi = np.intersect1d(got.items, want.items, return_indices=True)
        np.testing.assert_allclose(got.scores[gi], want.scores[wi], atol=1e-3, err_msg=f"user {i}: scores of shared items differ")
        assert got.stage_counts["candidates"] == want.stage_counts["candidates"], f"user {i}: candidate counts differ"
        # the encoder graph's own parity bound (genrec.exporters.onnx_export.TOLERANCE)
        np.testing.assert_allclose(got.user_vector, want.user_vector, atol=1e-3, err_msg=f"user {i}: user vectors differ")
    assert same / len(reqs) >= 0.99, f"only {same}/{len(reqs)} users get the reference's top 10 in process"


def test_in_process_validation_is_the_references(serving, tiny_bundle):
    """One validate for both: the same inputs give the same request, or the same typed error."""
    from genrec.errors import GenrecError

    ref = ReferencePipeline(tiny_bundle)
    good = ([1, 2], [0, 1], [1.7e9, 1.7e9 + 5], [0, 1])
    assert serving.validate(*good, final_k=5).options == ref.validate(*good, final_k=5).options
    bad = ([1, 10**9], [0, 1], [1.7e9, 1.7e9 + 5], [0, 1])
    errors = []
    for pipe in (serving, ref):
        with pytest.raises(GenrecError) as e:
            pipe.validate(*bad)
        errors.append(str(e.value))
    assert errors[0] == errors[1]
