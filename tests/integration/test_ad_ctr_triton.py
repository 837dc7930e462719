"""``ad_ctr`` and the ``feed_candidates`` ensemble through the real Triton (pip runtime) on a
published `tiny` run: the ensemble's answer equals the two separate calls, request parameters and
optional inputs reach ``recommend`` inside the ensemble, the ads cap is enforced with a clear
error, and a pCTR version that fails to load or is rolled back leaves a version serving.

Tolerance 1e-5: the ensemble and the direct calls run the same models on the same server; only
float32 rounding in batched vs unbatched onnxruntime calls can differ.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.ad_round_trip import FeedCall, feed_calls, via_ensemble, via_two_calls
from genrec.exporters.publish import PublishError, has_ad_ctr, publish_file, publish_run, rollback, version_numbers

pytestmark = pytest.mark.integration
grpc = pytest.importorskip("tritonclient.grpc")
pytest.importorskip("pymilvus")
N_USERS = 12
ATOL = 1e-5


@pytest.fixture(scope="module")
def calls(tiny_run) -> list[FeedCall]:
    if not has_ad_ctr(tiny_run):
        pytest.fail("the tiny run has no pCTR model (genrec-train writes ad_ctr.json)")
    return feed_calls(tiny_run, N_USERS, n_ads=9)


@pytest.fixture
def client(triton):
    return grpc.InferenceServerClient(triton.grpc_url)


def _ad_ctr(client, user: np.ndarray, ads: np.ndarray):
    ins = []
    for name, arr in (("user_vector", user), ("ad_features", ads)):
        t = grpc.InferInput(name, list(arr.shape), "FP32")
        t.set_data_from_numpy(np.ascontiguousarray(arr, np.float32))
        ins.append(t)
    return client.infer("ad_ctr", ins)


def test_the_ensemble_equals_recommend_then_ad_ctr(client, calls, repository):
    assert sorted(p.name for p in (repository / "feed_candidates").iterdir()) == ["1", "config.pbtxt"]
    assert not any((repository / "feed_candidates" / "1").iterdir())  # an ensemble has no files of its own
    for i, call in enumerate(calls):
        items, scores, pctr = via_ensemble(client, call)
        d_items, d_scores, d_pctr = via_two_calls(client, call)
        np.testing.assert_array_equal(items, d_items, err_msg=f"user {i}")
        np.testing.assert_allclose(scores, d_scores, atol=ATOL, err_msg=f"user {i}")
        np.testing.assert_allclose(pctr, d_pctr, atol=ATOL, err_msg=f"user {i}")
        assert pctr.shape == (call.ad_features.shape[0],) and ((pctr > 0) & (pctr < 1)).all()


def test_parameters_and_optional_inputs_reach_recommend_inside_the_ensemble(client, calls):
    call = calls[0]
    full, _, _ = via_ensemble(client, call)
    blocked = full[:3]
    # top_k (a request parameter) and excluded_items (an optional input) forwarded by the ensemble
    tight = FeedCall(call.req, call.ad_features, None, (("top_k", 5), ("excluded", blocked)))
    items, scores, _ = via_ensemble(client, tight)
    d_items, d_scores, _ = via_two_calls(client, tight)
    assert len(items) == 5 and not np.isin(items, blocked).any()
    np.testing.assert_array_equal(items, d_items)
    np.testing.assert_allclose(scores, d_scores, atol=ATOL)
    # no optional input at all (no user_id, segment, device, time): still one answer, the same as direct
    bare = FeedCall(call.req, call.ad_features)
    assert np.array_equal(via_ensemble(client, bare)[0], via_two_calls(client, bare)[0])


def test_ad_ctr_batches_requests_and_refuses_ads_over_its_cap(client, calls, tiny_bundle):
    cap = tiny_bundle.cfg.ads.max_candidates
    rows = calls[0].ad_features
    users = np.stack([via_two_calls_user(client, c) for c in calls[:3]])  # (3, d)
    batched = _ad_ctr(client, users, np.stack([rows] * 3)).as_numpy("pctr")
    for b in range(3):  # each request in a batch gets its own user's answer
        np.testing.assert_allclose(batched[b], _ad_ctr(client, users[b : b + 1], rows[None]).as_numpy("pctr")[0], atol=ATOL)
    over = np.repeat(rows[:1], cap + 1, axis=0)[None]
    with pytest.raises(grpc.InferenceServerException, match=f"over the cap of {cap}") as e:
        _ad_ctr(client, users[:1], over)
    assert "INVALID_ARG" in str(e.value.status())
    with pytest.raises(grpc.InferenceServerException, match=f"over the cap of {cap}"):
        via_ensemble(client, FeedCall(calls[0].req, over[0]))
    assert _ad_ctr(client, users[:1], np.repeat(rows[:1], cap, axis=0)[None]).as_numpy("pctr").shape == (1, cap)


def via_two_calls_user(client, call: FeedCall) -> np.ndarray:
    """recommend's user_vector output alone: (d,)."""
    from bench.ad_round_trip import _grpc_inputs, recommend_tensors

    tensors, params = recommend_tensors(call)
    r = client.infer("recommend", _grpc_inputs(tensors), outputs=[grpc.InferRequestedOutput("user_vector")], parameters=params or None)
    assert r.as_numpy("items") is None  # not requested: not sent
    return r.as_numpy("user_vector")[0]


def _answering_version(client, d_user: int, rows: np.ndarray) -> int:
    """The ad_ctr version that answers an unversioned request."""
    r = _ad_ctr(client, np.zeros((1, d_user), np.float32), rows[None])
    return int(r.get_response().model_version)


def test_a_broken_pctr_version_leaves_the_previous_one_serving_and_rollback_works(
    client, triton, repository, calls, tiny_bundle, tmp_path, monkeypatch
):
    import genrec.exporters.publish as pub
    from genrec.contracts import ad_ctr_contract

    c = ad_ctr_contract(tiny_bundle.cfg)
    before = version_numbers(repository / "ad_ctr")
    good = repository / "ad_ctr" / str(before[-1]) / "model.onnx"
    d = tiny_bundle.cfg.encoder.d_model
    rows = calls[1].ad_features
    want = via_ensemble(client, calls[1])[2]
    assert _answering_version(client, d, rows) == before[-1]
    corrupt = tmp_path / "model.onnx"
    corrupt.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(PublishError, match="does not load"):  # the local gate
        publish_file(repository, c, corrupt, {}, triton.http_url)
    # past the local gate (as if onnxruntime here accepted it), Triton refuses it: retired, reloaded
    monkeypatch.setattr(pub, "smoke_check", lambda path, contract: None)
    with pytest.raises(PublishError, match="refused to load"):
        publish_file(repository, c, corrupt, {}, triton.http_url)
    monkeypatch.undo()
    assert version_numbers(repository / "ad_ctr") == before
    np.testing.assert_allclose(via_ensemble(client, calls[1])[2], want, atol=ATOL)  # the ensemble still answers
    # a good new version serves, and genrec-rollback's path brings the previous one back
    new = publish_file(repository, c, good, {}, triton.http_url)
    assert new.version == before[-1] + 1 and _answering_version(client, d, rows) == new.version
    np.testing.assert_allclose(via_ensemble(client, calls[1])[2], want, atol=ATOL)
    assert rollback(repository, "ad_ctr", triton.http_url) == before[-1]
    assert version_numbers(repository / "ad_ctr") == before and _answering_version(client, d, rows) == before[-1]
    np.testing.assert_allclose(via_ensemble(client, calls[1])[2], want, atol=ATOL)


def test_publishing_into_the_running_server_moves_ad_ctr_recommend_and_the_ensemble_together(client, triton, repository, tiny_run, calls):
    want = via_ensemble(client, calls[2])
    before = {m: version_numbers(repository / m)[-1] for m in ("ad_ctr", "recommend")}
    published = {p.model: p.version for p in publish_run(tiny_run, repository, triton_url=triton.http_url, progress=lambda m: None)}
    assert list(published)[-3:] == ["ad_ctr", "recommend", "feed_candidates"]  # the ensemble last, after both
    assert all(published[m] == before[m] + 1 for m in before) and published["feed_candidates"] == 1
    got = via_ensemble(client, calls[2])  # the same run again: the same answer from the new versions
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[2], want[2], atol=ATOL)
