"""Typed client for Triton's ``recommend`` model (KServe v2), gRPC or HTTP, sync or asyncio.

    from genrec.client import RecommendClient, AsyncRecommendClient
    c = RecommendClient("localhost:8001")                 # gRPC; RecommendClient("localhost:8000", "http")
    r = c.recommend([12, 7], [0, 1], [1.7e9, 1.7e9 + 60], [0, 0], user_id="u42", top_k=5, timeout_s=0.2)
    r.items, r.scores, r.request_id

One gRPC channel (HTTP/2, concurrent calls multiplexed) or one pooled HTTP connection set per
client: make one client and share it. Each call has a timeout (``timeout_s``, per call or the
client's default) and is retried by the client's ``RetryPolicy`` only when the failure is
transient (UNAVAILABLE, DEADLINE_EXCEEDED, HTTP 429/503, connection refused). A refused request
raises ``RecommendError`` with ``invalid_argument`` set, the server's message, its code and the
request id sent to Triton; it is never retried.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from genrec.client.errors import HTTP_TO_GRPC, RETRYABLE_GRPC, RETRYABLE_HTTP, RecommendError, is_reloading
from genrec.client.retry import RetryPolicy, parse_retry_after

MODEL = "recommend"
ArrayLike = Sequence[int] | Sequence[float] | np.ndarray
Tensor = tuple[str, np.ndarray, str]  # (input name, values, KServe datatype)


@dataclass(frozen=True)
class RecommendResult:
    items: np.ndarray  # int64 item ids, best first
    scores: np.ndarray  # float32 ranker scores
    model_version: str = ""
    request_id: str = ""


def encode_request(
    items: ArrayLike,
    actions: ArrayLike,
    timestamps: ArrayLike,
    devices: ArrayLike,
    *,
    user_id: str | None = None,
    segment: int | None = None,
    ctx_device: int | None = None,
    request_time: float | None = None,
    excluded: ArrayLike | None = None,
    beam_width: int | str | Sequence[int] | None = None,
    ann_candidates: int | None = None,
    max_candidates: int | None = None,
    top_k: int | None = None,
) -> tuple[list[Tensor], dict[str, Any]]:
    """The KServe tensors and parameters of one request (names: ``genrec.contracts.recommend_contract``)."""
    tensors: list[Tensor] = [
        ("history_items", np.asarray(items, dtype=np.int64).reshape(-1), "INT64"),
        ("history_actions", np.asarray(actions, dtype=np.int64).reshape(-1), "INT64"),
        ("history_timestamps", np.asarray(timestamps, dtype=np.float64).reshape(-1), "FP64"),
        ("history_devices", np.asarray(devices, dtype=np.int64).reshape(-1), "INT64"),
    ]
    if user_id is not None:
        tensors.append(("user_id", np.array([user_id.encode()], dtype=object), "BYTES"))
    for name, v, dt, np_dt in (
        ("segment", segment, "INT64", np.int64),
        ("ctx_device", ctx_device, "INT64", np.int64),
        ("request_time", request_time, "FP64", np.float64),
    ):
        if v is not None:
            tensors.append((name, np.array([v], dtype=np_dt), dt))
    if excluded is not None:
        tensors.append(("excluded_items", np.asarray(excluded, dtype=np.int64).reshape(-1), "INT64"))
    params: dict[str, Any] = {}
    given: dict[str, Any] = {"beam_width": beam_width, "ann_candidates": ann_candidates, "max_candidates": max_candidates, "top_k": top_k}
    for k, p in given.items():
        if p is not None:
            params[k] = ",".join(map(str, p)) if isinstance(p, list | tuple) else (int(p) if isinstance(p, np.integer) else p)
    return tensors, params


def _grpc_error(e: Exception, request_id: str) -> RecommendError:
    status = str(getattr(e, "status", lambda: "")() or "")
    code = status.rsplit(".", 1)[-1] if status else "UNKNOWN"
    msg = getattr(e, "message", lambda: str(e))() or str(e)
    return RecommendError(msg, code=code, request_id=request_id, retryable=code in RETRYABLE_GRPC or is_reloading(msg))


def _http_error(status: int, body: bytes, headers: Any, request_id: str) -> RecommendError:
    try:
        msg = str(json.loads(body).get("error", ""))
    except (ValueError, AttributeError):
        msg = body.decode("utf-8", "replace")[:2000]
    return RecommendError(
        msg or f"HTTP {status}",
        code=HTTP_TO_GRPC.get(status, "UNKNOWN" if status < 500 else "INTERNAL"),
        status=status,
        request_id=request_id,
        retryable=status in RETRYABLE_HTTP or is_reloading(msg),
        retry_after_s=parse_retry_after(headers.get("retry-after")),
    )


def _transport_error(e: Exception, request_id: str) -> RecommendError:
    import httpx

    code = "DEADLINE_EXCEEDED" if isinstance(e, httpx.TimeoutException) else "UNAVAILABLE"
    return RecommendError(f"{type(e).__name__}: {e}", code=code, request_id=request_id, retryable=True)


def _http_body(tensors: list[Tensor], params: dict[str, Any], request_id: str) -> dict[str, Any]:
    inputs = []
    for name, arr, dt in tensors:
        data = [v.decode() for v in arr.tolist()] if dt == "BYTES" else arr.tolist()
        inputs.append({"name": name, "datatype": dt, "shape": list(arr.shape), "data": data})
    body: dict[str, Any] = {"id": request_id, "inputs": inputs, "outputs": [{"name": "items"}, {"name": "scores"}]}
    if params:
        body["parameters"] = params
    return body


def _http_result(payload: dict[str, Any], request_id: str) -> RecommendResult:
    outs = {o["name"]: o for o in payload.get("outputs", [])}
    return RecommendResult(
        np.asarray(outs["items"]["data"], dtype=np.int64).reshape(outs["items"]["shape"]),
        np.asarray(outs["scores"]["data"], dtype=np.float32).reshape(outs["scores"]["shape"]),
        str(payload.get("model_version", "")),
        request_id,
    )


def _grpc_inputs(module: Any, tensors: list[Tensor]) -> list[Any]:
    out = []
    for name, arr, dt in tensors:
        t = module.InferInput(name, list(arr.shape), dt)
        t.set_data_from_numpy(arr)
        out.append(t)
    return out


@dataclass(frozen=True)
class _Call:
    """One ``recommend`` call, encoded once; every attempt (sync or asyncio, gRPC or HTTP) sends
    it with ``grpc_kwargs`` / ``http_path`` + ``http_body`` and reads the answer with
    ``grpc_answer`` / ``http_answer``. Only the awaiting differs between the two clients."""

    tensors: list[Tensor]
    params: dict[str, Any]
    rid: str
    timeout_s: float
    version: str

    @classmethod
    def make(
        cls, args: tuple[ArrayLike, ...], timeout_s: float, request_id: str | None, model_version: str, options: dict[str, Any]
    ) -> _Call:
        tensors, params = encode_request(*args, **options)
        return cls(tensors, params, request_id or uuid.uuid4().hex, timeout_s, model_version)

    def attempt_timeout(self, policy: RetryPolicy, attempt: Any) -> float:
        """The per-call timeout, capped at what is left of the policy's deadline."""
        expired = partial(RecommendError, code="DEADLINE_EXCEEDED", request_id=self.rid, retryable=False)
        return policy.attempt_timeout(self.timeout_s, attempt, expired)

    def grpc_kwargs(self, module: Any, timeout: float) -> dict[str, Any]:
        return {
            "model_name": MODEL,
            "inputs": _grpc_inputs(module, self.tensors),
            # named, so the server sends only these (recommend can also emit user_vector)
            "outputs": [module.InferRequestedOutput("items"), module.InferRequestedOutput("scores")],
            "model_version": self.version,
            "request_id": self.rid,
            "parameters": self.params or None,
            "client_timeout": timeout,
        }

    def grpc_answer(self, res: Any) -> RecommendResult:
        return RecommendResult(res.as_numpy("items"), res.as_numpy("scores"), str(res.get_response().model_version), self.rid)

    @property
    def http_path(self) -> str:
        return f"/v2/models/{MODEL}" + (f"/versions/{self.version}" if self.version else "") + "/infer"

    def http_body(self) -> dict[str, Any]:
        return _http_body(self.tensors, self.params, self.rid)

    def http_answer(self, r: Any) -> RecommendResult:
        if r.status_code != 200:
            raise _http_error(r.status_code, r.content, r.headers, self.rid)
        return _http_result(r.json(), self.rid)


def _grpc_url(url: str) -> str:
    return url.split("://", 1)[-1].rstrip("/")


def _http_url(url: str) -> str:
    return (url if "://" in url else f"http://{url}").rstrip("/")


def _pool(max_connections: int) -> Any:
    import httpx

    return httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)


class _RecommendBase:
    def __init__(self, url: str, protocol: str, timeout_s: float, retry: RetryPolicy | None, max_connections: int) -> None:
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
        self.url, self.protocol, self.timeout_s = url, protocol, timeout_s
        self.retry = retry if retry is not None else RetryPolicy()
        self.max_connections = max_connections

    def _call(self, args: tuple[ArrayLike, ...], timeout_s: float | None, request_id: str | None, version: str, options: Any) -> _Call:
        return _Call.make(args, self.timeout_s if timeout_s is None else timeout_s, request_id, version, options)


class RecommendClient(_RecommendBase):
    """Sync client. ``protocol``: ``grpc`` (``host:8001``) or ``http`` (``host:8000``)."""

    def __init__(
        self,
        url: str,
        protocol: str = "grpc",
        timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        max_connections: int = 16,
    ) -> None:
        super().__init__(url, protocol, timeout_s, retry, max_connections)
        if protocol == "grpc":
            import tritonclient.grpc as grpcclient

            self._grpc = grpcclient
            self.client: Any = grpcclient.InferenceServerClient(_grpc_url(url))
        else:
            import httpx

            self.client = httpx.Client(base_url=_http_url(url), limits=_pool(max_connections), timeout=timeout_s)

    def recommend(
        self,
        items: ArrayLike,
        actions: ArrayLike,
        timestamps: ArrayLike,
        devices: ArrayLike,
        *,
        timeout_s: float | None = None,
        request_id: str | None = None,
        model_version: str = "",
        **options: Any,
    ) -> RecommendResult:
        """``options``: user_id, segment, ctx_device, request_time, excluded, beam_width,
        ann_candidates, max_candidates, top_k (see ``encode_request``)."""
        call = self._call((items, actions, timestamps, devices), timeout_s, request_id, model_version, options)
        for attempt in self.retry.sync():
            with attempt:
                return self._once(call, call.attempt_timeout(self.retry, attempt))
        raise AssertionError("unreachable: tenacity reraises the last error")

    def _once(self, call: _Call, timeout: float) -> RecommendResult:
        if self.protocol == "grpc":
            from tritonclient.utils import InferenceServerException

            try:
                return call.grpc_answer(self.client.infer(**call.grpc_kwargs(self._grpc, timeout)))
            except InferenceServerException as e:
                raise _grpc_error(e, call.rid) from e
        import httpx

        try:
            r = self.client.post(call.http_path, json=call.http_body(), timeout=timeout)
        except httpx.TransportError as e:
            raise _transport_error(e, call.rid) from e
        return call.http_answer(r)

    def ready(self, timeout_s: float = 2.0) -> bool:
        """Is ``recommend`` ready to serve (no retry)?"""
        try:
            if self.protocol == "grpc":
                return bool(self.client.is_model_ready(MODEL, client_timeout=timeout_s))
            return self.client.get(f"/v2/models/{MODEL}/ready", timeout=timeout_s).status_code == 200
        except Exception:
            return False

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> RecommendClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRecommendClient(_RecommendBase):
    """asyncio client (``tritonclient.grpc.aio`` or ``httpx.AsyncClient``), the same calls awaited."""

    def __init__(
        self,
        url: str,
        protocol: str = "grpc",
        timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        max_connections: int = 16,
    ) -> None:
        super().__init__(url, protocol, timeout_s, retry, max_connections)
        self._client: Any = None  # made on first use, inside the running event loop

    @property
    def client(self) -> Any:
        if self._client is None:
            if self.protocol == "grpc":
                import tritonclient.grpc.aio as aio

                self._client = aio.InferenceServerClient(_grpc_url(self.url))
            else:
                import httpx

                self._client = httpx.AsyncClient(base_url=_http_url(self.url), limits=_pool(self.max_connections), timeout=self.timeout_s)
        return self._client

    async def recommend(
        self,
        items: ArrayLike,
        actions: ArrayLike,
        timestamps: ArrayLike,
        devices: ArrayLike,
        *,
        timeout_s: float | None = None,
        request_id: str | None = None,
        model_version: str = "",
        **options: Any,
    ) -> RecommendResult:
        call = self._call((items, actions, timestamps, devices), timeout_s, request_id, model_version, options)
        async for attempt in self.retry.asyncio():
            with attempt:
                return await self._once(call, call.attempt_timeout(self.retry, attempt))
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _once(self, call: _Call, timeout: float) -> RecommendResult:
        if self.protocol == "grpc":
            import tritonclient.grpc as grpcclient
            from tritonclient.utils import InferenceServerException

            try:
                return call.grpc_answer(await self.client.infer(**call.grpc_kwargs(grpcclient, timeout)))
            except InferenceServerException as e:
                raise _grpc_error(e, call.rid) from e
        import httpx

        try:
            r = await self.client.post(call.http_path, json=call.http_body(), timeout=timeout)
        except httpx.TransportError as e:
            raise _transport_error(e, call.rid) from e
        return call.http_answer(r)

    async def ready(self, timeout_s: float = 2.0) -> bool:
        try:
            if self.protocol == "grpc":
                return bool(await self.client.is_model_ready(MODEL, client_timeout=timeout_s))
            return (await self.client.get(f"/v2/models/{MODEL}/ready", timeout=timeout_s)).status_code == 200
        except Exception:
            return False

    async def close(self) -> None:
        if self._client is not None:
            if self.protocol == "grpc":
                await self._client.close()
            else:
                await self._client.aclose()
            self._client = None

    async def __aenter__(self) -> AsyncRecommendClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
