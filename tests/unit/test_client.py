"""genrec.client without the real services: imports without torch, request encoding against the
recommend contract, the retry policy (what is retried, backoff, Retry-After, the same
Idempotency-Key), and error parsing; over a small scripted HTTP server on loopback."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from genrec.client import AsyncFeedClient, ClientError, Event, FeedApiError, FeedClient, RecommendClient, RecommendError, RetryPolicy
from genrec.client.recommend_client import encode_request
from genrec.client.retry import parse_retry_after

FAST = {"initial_s": 0.001, "max_s": 0.01}


def test_the_client_imports_without_torch_or_the_serving_code():
    code = (
        "import sys, genrec.client, genrec.client.cli;"
        "heavy = [m for m in ('torch', 'lightgbm', 'pandas', 'onnxruntime', 'genrec.ensemble', 'genrec.settings', 'bentoml')"
        " if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_encoded_tensors_follow_the_recommend_contract():
    from genrec.contracts import recommend_contract
    from genrec.settings import named_config

    contract = recommend_contract(named_config("tiny", environ={}))
    tensors, params = encode_request(
        [1, 2], [0, 1], [1.7e9, 1.7e9 + 1], [0, 0], user_id="u1", segment=1, ctx_device=0, request_time=1.7e9 + 60, excluded=[3],
        beam_width=[4, 8, 16], top_k=5,
    )  # fmt: skip
    declared = {t.name: ("BYTES" if t.dtype == "STRING" else t.dtype) for t in contract.inputs}
    assert {name: dt for name, _, dt in tensors} == declared
    assert set(params) <= set(contract.parameters) and params["beam_width"] == "4,8,16"


def test_parse_retry_after():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    later = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < parse_retry_after(later) <= 31


@given(st.lists(st.booleans(), min_size=1, max_size=6))
def test_only_retryable_failures_are_retried(retryable):
    """A sequence of failures then success: the call stops at the first non-retryable failure."""
    calls = []

    def flaky():
        i = len(calls)
        calls.append(i)
        if i < len(retryable):
            raise ClientError("x", retryable=retryable[i])
        return "ok"

    first_fatal = next((i for i, r in enumerate(retryable) if not r), None)
    try:
        for attempt in RetryPolicy(attempts=10, **FAST).sync():
            with attempt:
                result = flaky()
    except ClientError:
        assert first_fatal is not None and len(calls) == first_fatal + 1
    else:
        assert first_fatal is None and result == "ok" and len(calls) == len(retryable) + 1


def test_backoff_is_jittered_exponential_and_capped():
    waits: list[float] = []
    policy = RetryPolicy(attempts=8, initial_s=0.0001, max_s=0.0008, on_retry=lambda s: waits.append(s.next_action.sleep))
    with pytest.raises(ClientError):
        for attempt in policy.sync():
            with attempt:
                raise ClientError("down", retryable=True)
    assert len(waits) == 7 and all(0 <= w <= 0.0008 for w in waits)
    assert len(set(waits)) > 1  # jittered


class Scripted(BaseHTTPRequestHandler):
    """Answers each request with the next scripted (status, headers, body); records what came in."""

    script: list[tuple[int, dict[str, str], dict]] = []
    seen: list[dict] = []

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        type(self).seen.append({"path": self.path, "headers": dict(self.headers), "body": body})
        status, headers, payload = type(self).script.pop(0) if type(self).script else (500, {}, {"error": "script ran out"})
        raw = json.dumps(payload).encode()
        self.send_response(status)
        for k, v in {"content-type": "application/json", **headers}.items():
            self.send_header(k, v)
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    do_GET = do_POST = _answer

    def log_message(self, *a) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[tuple[str, type[Scripted]]]:
    handler = type("Handler", (Scripted,), {"script": [], "seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def _envelope(data, code=0, msg="", rid="rid-1"):
    return {"code": code, "data": data, "msg": msg, "request_id": rid}


ACK = {"accepted": 1, "history_appended": 1, "impressions": 0, "likes": 0, "negatives": 0}
EVENT = Event(type="click", item_id=3, event_token="tok", timestamp=1.7e9)


def test_events_are_retried_on_503_with_retry_after_and_the_same_idempotency_key(scripted):
    url, h = scripted
    h.script += [
        (503, {"retry-after": "0.2"}, _envelope(None, 50300, "the event store is unavailable")),
        (429, {"retry-after": "0"}, _envelope(None, 42900, "slow down")),
        (200, {"idempotent-replayed": "true"}, _envelope(ACK)),
    ]
    waits: list[float] = []
    client = FeedClient(url, retry=RetryPolicy(on_retry=lambda s: waits.append(s.next_action.sleep), **FAST))
    t0 = time.perf_counter()
    out = client.events("u1", [EVENT])
    assert time.perf_counter() - t0 >= 0.2 and waits == [0.2, 0.0]  # Retry-After replaced the backoff
    keys = {s["headers"]["Idempotency-Key"] for s in h.seen}
    assert len(h.seen) == 3 and len(keys) == 1 and out.idempotency_key in keys
    assert out.accepted == 1 and out.replayed
    assert h.seen[0]["body"]["events"][0] == {"type": "click", "item_id": 3, "event_token": "tok", "timestamp": 1.7e9}


def test_a_refused_request_is_not_retried_and_carries_code_message_and_request_id(scripted):
    url, h = scripted
    h.script += [(422, {}, _envelope(None, 42201, "events[0].item_id: unknown item 3", "rid-422"))]
    with pytest.raises(FeedApiError) as e:
        FeedClient(url, retry=RetryPolicy(**FAST)).events("u1", [EVENT])
    assert len(h.seen) == 1
    assert (e.value.code, e.value.status, e.value.request_id, e.value.retryable) == (42201, 422, "rid-422", False)
    assert "unknown item" in str(e.value) and "rid-422" in str(e.value)


def test_feed_page_is_typed_and_sends_its_request_id(scripted):
    url, h = scripted
    item = {
        "type": "content",
        "id": 5,
        "score": 0.5,
        "position": 0,
        "reason": "r",
        "display": {},
        "tracking": {"event_token": "t", "trace_id": "x"},
    }
    h.script += [(200, {"x-feed-replayed": "1"}, _envelope({"items": [item], "next_cursor": "c1", "session_id": "s", "page": 1}))]
    page = FeedClient(url).feed("u1", 5, "c0", request_id="my-request")
    assert page.items[0].id == 5 and page.next_cursor == "c1" and page.replayed and page.request_id == "rid-1"
    assert h.seen[0]["headers"]["X-Request-ID"] == "my-request"
    assert h.seen[0]["body"] == {"user_id": "u1", "count": 5, "cursor": "c0"}
    assert Event.of(page.items[0], "impression").event_token == "t"


def test_async_feed_client_retries_the_same_way(scripted):
    url, h = scripted
    h.script += [(503, {}, _envelope(None, 50300, "starting")), (200, {}, _envelope(ACK))]

    async def go():
        async with AsyncFeedClient(url, retry=RetryPolicy(**FAST)) as c:
            return await c.events("u1", [EVENT], idempotency_key="key-1")

    assert asyncio.run(go()).idempotency_key == "key-1"
    assert [s["headers"]["Idempotency-Key"] for s in h.seen] == ["key-1", "key-1"]


def test_recommend_over_http_maps_triton_errors(scripted):
    url, h = scripted
    h.script += [
        (503, {}, {"error": "model not ready"}),
        (400, {}, {"error": "history_items: unknown item 99"}),
    ]
    with pytest.raises(RecommendError) as e:
        RecommendClient(url, "http", retry=RetryPolicy(**FAST)).recommend([99], [0], [1.7e9], [0], request_id="r-9")
    assert e.value.invalid_argument and e.value.code == "INVALID_ARGUMENT" and e.value.request_id == "r-9"
    assert len(h.seen) == 2 and h.seen[0]["body"]["id"] == "r-9"


def test_a_model_being_reloaded_is_retried_and_an_unknown_one_is_not(scripted):
    url, h = scripted
    h.script += [
        (404, {}, {"error": "Request for unknown model: 'recommend' has no available versions"}),  # the watchdog's reload
        (404, {}, {"error": "Request for unknown model: 'recommend' is not found"}),
    ]
    with pytest.raises(RecommendError) as e:
        RecommendClient(url, "http", retry=RetryPolicy(**FAST)).recommend([1], [0], [1.7e9], [0])
    assert len(h.seen) == 2, "the reloading answer was retried, the unknown model was not"
    assert e.value.code == "NOT_FOUND" and not e.value.retryable


def test_connection_refused_is_retried_then_raised_as_unavailable(free_port):
    waits: list[float] = []
    policy = RetryPolicy(attempts=3, on_retry=lambda s: waits.append(1.0), **FAST)
    for client in (RecommendClient(f"127.0.0.1:{free_port()}", retry=policy), FeedClient(f"127.0.0.1:{free_port()}", retry=policy)):
        with pytest.raises(ClientError) as e:
            if isinstance(client, RecommendClient):
                client.recommend([], [], [], [], timeout_s=2)
            else:
                client.feed("u1")
        assert e.value.code == "UNAVAILABLE" and e.value.retryable
    assert len(waits) == 4


def test_results_are_numpy_typed(scripted):
    url, h = scripted
    out = {
        "model_version": "3",
        "outputs": [{"name": "items", "shape": [2], "data": [4, 5]}, {"name": "scores", "shape": [2], "data": [0.5, 0.25]}],
    }
    h.script += [(200, {}, out)]
    r = RecommendClient(url, "http").recommend([1], [0], [1.7e9], [0], top_k=2)
    assert r.items.dtype == np.int64 and r.scores.dtype == np.float32 and r.model_version == "3"


# ---- deadline_s is a real deadline: each attempt's timeout is capped at the time left ----------

DEADLINE_S = 0.6
NEVER_S = 3.0  # a fake server that answers only when the caller's timeout runs out (capped here)


class SlowCalls:
    """Fake transports that never answer within the timeout they are given: each call records
    that timeout, sleeps it out (at most NEVER_S) and fails the way a timed-out call fails."""

    def __init__(self) -> None:
        self.timeouts: list[float] = []

    def _wait(self, timeout: float) -> float:
        self.timeouts.append(timeout)
        return min(timeout, NEVER_S)

    def grpc_infer(self, **kw):
        from tritonclient.utils import InferenceServerException

        time.sleep(self._wait(kw["client_timeout"]))
        raise InferenceServerException("Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED")

    async def grpc_infer_async(self, **kw):
        from tritonclient.utils import InferenceServerException

        await asyncio.sleep(self._wait(kw["client_timeout"]))
        raise InferenceServerException("Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED")

    def http(self, request):
        import httpx

        time.sleep(self._wait(request.extensions["timeout"]["read"]))
        raise httpx.ReadTimeout("timed out", request=request)

    async def http_async(self, request):
        import httpx

        await asyncio.sleep(self._wait(request.extensions["timeout"]["read"]))
        raise httpx.ReadTimeout("timed out", request=request)


def _deadline_policy() -> RetryPolicy:
    return RetryPolicy(attempts=50, initial_s=0.001, max_s=0.01, deadline_s=DEADLINE_S)


def _slow_client(kind: str, slow: SlowCalls):
    """(client, call) where ``call()`` runs one request through the fake slow transport."""
    import types

    import httpx

    from genrec.client import AsyncRecommendClient

    history = ([1], [0], [1.7e9], [0])
    policy = _deadline_policy()
    if kind == "recommend-grpc":
        c = RecommendClient("127.0.0.1:1", timeout_s=10.0, retry=policy)
        c.client = types.SimpleNamespace(infer=slow.grpc_infer)
        return lambda: c.recommend(*history)
    if kind == "recommend-grpc-async":
        a = AsyncRecommendClient("127.0.0.1:1", timeout_s=10.0, retry=policy)
        a._client = types.SimpleNamespace(infer=slow.grpc_infer_async)
        return lambda: asyncio.run(a.recommend(*history))
    if kind == "recommend-http":
        c = RecommendClient("127.0.0.1:1", "http", timeout_s=10.0, retry=policy)
        c.client = httpx.Client(base_url="http://127.0.0.1:1", transport=httpx.MockTransport(slow.http))
        return lambda: c.recommend(*history)
    if kind == "recommend-http-async":
        a = AsyncRecommendClient("127.0.0.1:1", "http", timeout_s=10.0, retry=policy)
        a._client = httpx.AsyncClient(base_url="http://127.0.0.1:1", transport=httpx.MockTransport(slow.http_async))
        return lambda: asyncio.run(a.recommend(*history))
    if kind == "feed":
        f = FeedClient("127.0.0.1:1", timeout_s=10.0, retry=policy)
        f.http = httpx.Client(base_url="http://127.0.0.1:1", transport=httpx.MockTransport(slow.http))
        return lambda: f.feed("u1")
    assert kind == "feed-async"
    af = AsyncFeedClient("127.0.0.1:1", timeout_s=10.0, retry=policy)
    af._http = httpx.AsyncClient(base_url="http://127.0.0.1:1", transport=httpx.MockTransport(slow.http_async))
    return lambda: asyncio.run(af.feed("u1"))


@pytest.mark.parametrize("kind", ["recommend-grpc", "recommend-grpc-async", "recommend-http", "recommend-http-async", "feed", "feed-async"])
def test_each_attempt_gets_only_the_time_left_before_the_deadline(kind):
    # per-call timeout 10 s, deadline 0.6 s, a server that never answers: the call gives up after
    # about 0.6 s (before the fix the first attempt alone waited out its full timeout)
    slow = SlowCalls()
    call = _slow_client(kind, slow)
    t0 = time.monotonic()
    with pytest.raises(ClientError) as e:
        call()
    elapsed = time.monotonic() - t0
    assert e.value.code == "DEADLINE_EXCEEDED"
    assert slow.timeouts and all(0 < t <= DEADLINE_S for t in slow.timeouts), slow.timeouts
    assert slow.timeouts == sorted(slow.timeouts, reverse=True)  # each attempt has less left
    assert elapsed < DEADLINE_S + 1.0 < NEVER_S, elapsed


def test_attempt_timeout_caps_at_the_time_left_and_refuses_when_none_is():
    import types

    def attempt(started_s_ago: float):
        state = types.SimpleNamespace(start_time=time.monotonic() - started_s_ago, attempt_number=3)
        return types.SimpleNamespace(retry_state=state)

    policy = RetryPolicy(deadline_s=1.0)

    def expired(m):
        return ClientError(m, code="DEADLINE_EXCEEDED")

    assert 0.9 < policy.attempt_timeout(5.0, attempt(0.0), expired) <= 1.0
    assert 0.1 < policy.attempt_timeout(5.0, attempt(0.7), expired) <= 0.3
    assert policy.attempt_timeout(0.05, attempt(0.7), expired) == 0.05  # a shorter per-call timeout stands
    with pytest.raises(ClientError, match="deadline of 1 s spent before attempt 3"):
        policy.attempt_timeout(5.0, attempt(1.1), expired)
    assert RetryPolicy(deadline_s=None).attempt_timeout(5.0, attempt(99.0), expired) == 5.0


def test_no_wait_is_started_that_would_end_past_the_deadline(scripted):
    url, h = scripted
    h.script += [(503, {"retry-after": "5"}, _envelope(None, code=50300, msg="busy"))] * 3
    t0 = time.monotonic()
    with pytest.raises(FeedApiError) as e:
        FeedClient(url, retry=RetryPolicy(deadline_s=1.0)).feed("u1")
    assert e.value.status == 503 and len(h.seen) == 1 and time.monotonic() - t0 < 1.0
