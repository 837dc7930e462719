"""``recommend`` through the real Triton server (pip runtime) on a published `tiny` run.

Covers the whole path (encoder cache, KV-cached constrained beam search, milvus-lite ANN,
cascade, ranker), parity with the PyTorch reference, bad inputs, the custom metrics, and the
BLS execution mode.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from genrec.client.recommend_client import RecommendClient, RecommendError
from genrec.data.split import leave_last_out
from genrec.evaluate import dataset_of
from genrec.heldout import heldout_requests
from genrec.reference import ReferencePipeline
from genrec.runtime.triton_server import metrics_settle_s, scrape_metrics

pytestmark = pytest.mark.integration
pytest.importorskip("tritonclient.grpc")
pytest.importorskip("pymilvus")
N_USERS = 200


@pytest.fixture(scope="module")
def heldout(tiny_bundle):
    ds = dataset_of(tiny_bundle)
    split = leave_last_out(ds.events)
    return heldout_requests(ds, split, split.eligible_users[:N_USERS], tiny_bundle.cfg.pipeline)


def _call(client: RecommendClient, req, **kw):
    h = req.history
    return client.recommend(
        h.item, h.action, h.timestamp, h.device, segment=req.segment, ctx_device=req.ctx_device, request_time=req.ctx_time, **kw
    )


def _parity(triton, tiny_bundle, heldout, protocol="grpc"):
    reqs, targets = heldout
    ref = ReferencePipeline(tiny_bundle)
    url = triton.grpc_url if protocol == "grpc" else triton.http_url
    client = RecommendClient(url, protocol)
    same, hit_ref, hit_srv = 0, 0, 0
    for i, r in enumerate(reqs):
        want = ref.recommend(r)
        got = _call(client, r, user_id=f"user-{i}")
        same += np.array_equal(want.items, got.items)
        # every user, not only those whose lists match: the k-th best score agrees (a differing
        # list can only come from near-ties), and an item both return has the same score
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-3, err_msg=f"user {i}: k-th best scores differ")
        common, gi, wi = np.intersect1d(got.items, want.items, return_indices=True)
        np.testing.assert_allclose(got.scores[gi], want.scores[wi], atol=1e-3, err_msg=f"user {i}: scores of shared items differ")
        hit_ref += targets[i] in want.items
        hit_srv += targets[i] in got.items
    return same / len(reqs), hit_ref / len(reqs), hit_srv / len(reqs)


def test_top10_matches_the_pytorch_reference(triton, tiny_bundle, heldout):
    same, recall_ref, recall_srv = _parity(triton, tiny_bundle, heldout)
    assert same >= 0.99, f"only {same:.1%} of {N_USERS} users get the reference's top 10"
    assert abs(recall_ref - recall_srv) <= 0.005


def test_returning_user_hits_the_encoder_cache_with_the_same_answer(triton, heldout):
    client = RecommendClient(triton.grpc_url)
    req = heldout[0][3]
    h = req.history
    cold = client.recommend(h.item, h.action, h.timestamp, h.device, request_time=req.ctx_time)  # no user id: no cache
    early = client.recommend(h.item[:-2], h.action[:-2], h.timestamp[:-2], h.device[:-2], user_id="returning", request_time=req.ctx_time)
    before = _metric(triton, "genrec_encoder_cache_hits_total", settle_s=metrics_settle_s())
    warm = client.recommend(h.item, h.action, h.timestamp, h.device, user_id="returning", request_time=req.ctx_time)
    assert _metric_reaches(triton, "genrec_encoder_cache_hits_total", before + 1) == before + 1
    np.testing.assert_array_equal(warm.items, cold.items)
    np.testing.assert_allclose(warm.scores, cold.scores, atol=1e-4)
    assert not np.array_equal(early.items, [])


def test_excluded_items_are_never_returned(triton, heldout):
    client = RecommendClient(triton.http_url, "http")
    req = heldout[0][5]
    first = _call(client, req)
    blocked = first.items[:5]
    again = _call(client, req, excluded=blocked[:3], beam_width="8,16,64")
    assert not np.isin(again.items, blocked[:3]).any()
    import tritonclient.http as http

    param = (
        http.InferenceServerClient(triton.http_url)
        .infer(
            "recommend",
            client_inputs(client, req),
            parameters={"excluded_items": ",".join(map(str, blocked[3:5]))},
        )
        .as_numpy("items")
    )
    assert not np.isin(param, blocked[3:5]).any()


def client_inputs(client, req):
    import tritonclient.http as http

    h = req.history
    out = []
    for name, arr, dt in (
        ("history_items", h.item.astype(np.int64), "INT64"),
        ("history_actions", h.action.astype(np.int64), "INT64"),
        ("history_timestamps", h.timestamp.astype(np.float64), "FP64"),
        ("history_devices", h.device.astype(np.int64), "INT64"),
    ):
        t = http.InferInput(name, list(arr.shape), dt)
        t.set_data_from_numpy(arr)
        out.append(t)
    return out


def test_cold_start_user_gets_popular_items(triton, tiny_bundle):
    client = RecommendClient(triton.grpc_url)
    r = client.recommend([], [], [], [], segment=1, request_time=1_767_225_600)
    assert len(r.items) == tiny_bundle.cfg.pipeline.final_k
    assert len(set(r.items.tolist())) == len(r.items)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"items": [10**7]}, "unknown item"),
        ({"timestamps": [float("nan")]}, "NaN"),
        ({"beam_width": -4}, "beam_width"),
        ({"beam_width": 10**6}, "beam_width"),
        ({"top_k": 0}, "top_k"),
        ({"segment": 99}, "segment"),
        ({"timestamps": [1.7e9, 1.6e9], "items": [1, 2], "actions": [0, 0], "devices": [0, 0]}, "oldest first"),
        ({"actions": [0, 1]}, "history_actions"),
    ],
)
def test_bad_input_gets_invalid_argument_and_the_server_keeps_serving(triton, kwargs, needle):
    client = RecommendClient(triton.grpc_url)
    args = {"items": [1], "actions": [0], "timestamps": [1.7e9], "devices": [0]}
    call = {k: kwargs.pop(k) for k in list(kwargs) if k in args}
    with pytest.raises(RecommendError) as e:
        client.recommend(**{**args, **call}, **kwargs)
    assert e.value.invalid_argument and needle in str(e.value)
    assert len(client.recommend(**args).items) > 0


def test_history_over_the_cap_is_refused(triton, tiny_bundle):
    n = tiny_bundle.cfg.pipeline.max_history_events + 1
    with pytest.raises(RecommendError) as e:
        RecommendClient(triton.grpc_url).recommend(np.ones(n), np.zeros(n), 1.7e9 + np.arange(n), np.zeros(n))
    assert e.value.invalid_argument and str(tiny_bundle.cfg.pipeline.max_history_events) in str(e.value)


def test_wrong_dtype_is_refused_by_triton(triton):
    import tritonclient.grpc as grpc
    from tritonclient.utils import InferenceServerException

    c = grpc.InferenceServerClient(triton.grpc_url)
    ins = []
    for name, arr, dt in (
        ("history_items", np.array([1], np.int32), "INT32"),
        ("history_actions", np.array([0], np.int64), "INT64"),
        ("history_timestamps", np.array([1.7e9]), "FP64"),
        ("history_devices", np.array([0], np.int64), "INT64"),
    ):
        t = grpc.InferInput(name, [1], dt)
        t.set_data_from_numpy(arr)
        ins.append(t)
    with pytest.raises(InferenceServerException, match="history_items"):
        c.infer("recommend", ins)


def _metric(triton, name: str, settle_s: float = 0.0) -> float:
    text = scrape_metrics(triton.metrics_url, settle_s)
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{") or line.startswith(name + " "))


def _metric_reaches(triton, name: str, want: float, timeout_s: float = 5.0) -> float:
    """The metric once it reaches ``want`` (custom metrics arrive from a background flush), or its
    value at the deadline (it must not overshoot later either: the caller compares)."""
    deadline = time.monotonic() + timeout_s
    while (value := _metric(triton, name)) < want and time.monotonic() < deadline:
        time.sleep(0.1)
    return value


def test_custom_metrics_are_on_the_metrics_port(triton, heldout):
    _call(RecommendClient(triton.grpc_url), heldout[0][0], user_id="metrics-user")
    text = scrape_metrics(triton.metrics_url, metrics_settle_s())
    for name in (
        "genrec_recommend_stage_duration_seconds_bucket",
        "genrec_recommend_candidates_bucket",
        "genrec_encoder_cache_hits_total",
        "genrec_encoder_cache_misses_total",
        "genrec_encoder_cache_bytes",
        "genrec_beams_pruned_total",
        "nv_inference_request_success",
    ):
        assert name in text, name
    for stage in ("encode", "generate", "retrieve", "prerank", "rank"):
        assert f'stage="{stage}"' in text
    assert _metric(triton, "genrec_encoder_cache_bytes") > 0
    assert _metric(triton, "genrec_beams_pruned_total") > 0


def test_bls_execution_gives_the_same_answers(repository, triton_server, tiny_bundle, heldout, triton):
    bls = triton_server(repository, GENREC_SERVING__EXECUTION="bls")
    try:
        a, b = RecommendClient(triton.grpc_url), RecommendClient(bls.grpc_url)
        for req in heldout[0][:20]:
            x, y = _call(a, req), _call(b, req)
            np.testing.assert_array_equal(x.items, y.items)
            np.testing.assert_allclose(x.scores, y.scores, atol=1e-4)
    finally:
        bls.stop()


def test_encoder_states_in_redis_through_triton(repository, triton_server, heldout, redis_url, triton):
    pytest.importorskip("redis")
    srv = triton_server(repository, GENREC_SERVING__STATE_STORE="redis", GENREC_SERVING__REDIS_URL=redis_url)
    try:
        client, plain = RecommendClient(srv.grpc_url), RecommendClient(triton.grpc_url)
        req = heldout[0][7]
        h = req.history
        client.recommend(h.item[:-1], h.action[:-1], h.timestamp[:-1], h.device[:-1], user_id="redis-user", request_time=req.ctx_time)
        warm = client.recommend(h.item, h.action, h.timestamp, h.device, user_id="redis-user", request_time=req.ctx_time)
        assert _metric_reaches(srv, "genrec_encoder_cache_hits_total", 1) == 1 and _metric(srv, "genrec_encoder_cache_errors_total") == 0
        np.testing.assert_array_equal(warm.items, plain.recommend(h.item, h.action, h.timestamp, h.device, request_time=req.ctx_time).items)
        import redis

        keys = redis.Redis.from_url(redis_url).keys("genrec:encoder-state:*:redis-user")
        assert len(keys) == 1, "one state, under the served encoder's digest"
    finally:
        srv.stop()
