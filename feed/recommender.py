"""Triton's ``recommend`` over the async gRPC client: one channel, made once and reused by every
request, a deadline per call, no retries (an INVALID_ARGUMENT would fail again, and a slow
server is answered by the fallback feed instead)."""

from __future__ import annotations

import time

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import aio as grpcaio
from tritonclient.utils import InferenceServerException

from genrec.feed.history import History
from genrec.feed.ports import RecommendFailed

MODEL = "recommend"
AD_CTR = "ad_ctr"
FEED_CANDIDATES = "feed_candidates"  # the ensemble: recommend -> ad_ctr in one round trip


def _input(name: str, arr: np.ndarray, dtype: str) -> grpcclient.InferInput:
    t = grpcclient.InferInput(name, list(arr.shape), dtype)
    t.set_data_from_numpy(arr)
    return t


class TritonRecommender:
    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.client = grpcaio.InferenceServerClient(url)

    async def ready(self, timeout_s: float = 1.0) -> bool:
        try:
            return bool(await self.client.is_model_ready(MODEL, client_timeout=timeout_s))
        except Exception:
            return False

    async def ready_versions(self) -> dict[str, list[int]]:
        """The ``recommend`` and ``ad_ctr`` versions Triton has ready (the canary routes among them)."""
        index = await self.client.get_model_repository_index(as_json=True, client_timeout=self.timeout_s)
        out: dict[str, list[int]] = {MODEL: [], AD_CTR: []}
        for m in index.get("models", []):
            if m.get("name") in out and m.get("state") == "READY":
                out[m["name"]].append(int(m["version"]))
        return {k: sorted(v) for k, v in out.items()}

    async def recommend(
        self, user_id: str, h: History, segment: int, device: int, excluded: list[int], top_k: int, version: str = ""
    ) -> tuple[list[tuple[int, float]], float]:
        """(item, score) best first, and the seconds the call took. Raises RecommendFailed."""
        t0 = time.perf_counter()
        r = await self._infer(MODEL, _recommend_inputs(user_id, h, segment, device, excluded), ("items", "scores"), top_k, version, t0)
        return _candidates(r), time.perf_counter() - t0

    async def recommend_with_ads(
        self,
        user_id: str,
        h: History,
        segment: int,
        device: int,
        excluded: list[int],
        top_k: int,
        ad_features: np.ndarray,
        version: str = "",
        ensemble: bool = True,
        ad_ctr_version: str = "",
    ) -> tuple[list[tuple[int, float]], np.ndarray | None, float]:
        """The organic candidates and the pCTR of each ``ad_features`` row (None when only the ads
        part failed: the page is served without ads). ``ensemble``: one round trip through
        ``feed_candidates`` (newest recommend and newest ad_ctr); else ``recommend`` (with its user
        vector), then ``ad_ctr`` at ``ad_ctr_version``. When the ads part fails the organic
        candidates are still asked for, within what is left of the deadline."""
        t0 = time.perf_counter()
        inputs = _recommend_inputs(user_id, h, segment, device, excluded)
        ads = _input("ad_features", ad_features[None].astype(np.float32), "FP32")
        if ensemble and not version:
            try:
                r = await self._infer(FEED_CANDIDATES, [*inputs, ads], ("items", "scores", "pctr"), top_k, "", t0)
                return _candidates(r), _pctr(r), time.perf_counter() - t0
            except RecommendFailed as e:
                if e.reason == "timeout":
                    raise
                # ad_ctr refusing or down fails the whole ensemble: the organic feed must not
                r = await self._infer(MODEL, inputs, ("items", "scores"), top_k, "", t0)
                return _candidates(r), None, time.perf_counter() - t0
        try:
            r = await self._infer(MODEL, inputs, ("items", "scores", "user_vector"), top_k, version, t0)
        except RecommendFailed as e:
            if e.reason != "rejected":
                raise
            # a version published before recommend had a user_vector output: organic only
            r = await self._infer(MODEL, inputs, ("items", "scores"), top_k, version, t0)
            return _candidates(r), None, time.perf_counter() - t0
        candidates, user_vector = _candidates(r), r.as_numpy("user_vector")
        if user_vector is None:
            return candidates, None, time.perf_counter() - t0
        try:
            vec = _input("user_vector", user_vector.reshape(1, -1).astype(np.float32), "FP32")
            a = await self._infer(AD_CTR, [vec, ads], ("pctr",), None, ad_ctr_version, t0)
            return candidates, _pctr(a), time.perf_counter() - t0
        except RecommendFailed:
            return candidates, None, time.perf_counter() - t0

    async def _infer(
        self, model: str, inputs: list[grpcclient.InferInput], names: tuple[str, ...], top_k: int | None, version: str, t0: float
    ) -> grpcclient.InferResult:
        outputs = [grpcclient.InferRequestedOutput(n) for n in names]
        parameters = {"top_k": top_k} if top_k is not None else None
        left = self.timeout_s - (time.perf_counter() - t0)  # one deadline for the whole feed request's calls
        if left <= 0.01:
            raise RecommendFailed("timeout", f"no time left for {model} within the {self.timeout_s} s deadline", time.perf_counter() - t0)
        try:
            return await self.client.infer(
                model, inputs, model_version=version, outputs=outputs, parameters=parameters, client_timeout=left
            )
        except InferenceServerException as e:
            status = str(e.status() or "")
            reason = "timeout" if "DEADLINE" in status else "rejected" if "INVALID_ARGUMENT" in status else "unavailable"
            raise RecommendFailed(reason, e.message() or str(e), time.perf_counter() - t0) from e
        except Exception as e:  # a broken channel must not become a 500
            raise RecommendFailed("unavailable", str(e), time.perf_counter() - t0) from e

    async def close(self) -> None:
        await self.client.close()


def _recommend_inputs(user_id: str, h: History, segment: int, device: int, excluded: list[int]) -> list[grpcclient.InferInput]:
    request_time = float(int(max(time.time(), float(h.times[-1]) + 1.0 if len(h) else 0.0)))  # whole seconds
    inputs = [
        _input("history_items", h.items.astype(np.int64), "INT64"),
        _input("history_actions", h.actions.astype(np.int64), "INT64"),
        # the model reads whole seconds; an event stored with a fractional time (the events API takes
        # any float) would otherwise get every later request of its user refused
        _input("history_timestamps", np.floor(h.times).astype(np.float64), "FP64"),
        _input("history_devices", h.devices.astype(np.int64), "INT64"),
        _input("user_id", np.array([user_id.encode()], dtype=np.object_), "BYTES"),
        _input("segment", np.array([segment], dtype=np.int64), "INT64"),
        _input("ctx_device", np.array([device], dtype=np.int64), "INT64"),
        _input("request_time", np.array([request_time], dtype=np.float64), "FP64"),
    ]
    if excluded:
        inputs.append(_input("excluded_items", np.asarray(excluded, dtype=np.int64), "INT64"))
    return inputs


def _candidates(r: grpcclient.InferResult) -> list[tuple[int, float]]:
    items, scores = r.as_numpy("items"), r.as_numpy("scores")
    if items is None or scores is None:
        raise RecommendFailed("unavailable", "recommend answered without items/scores")
    return [(int(i), float(s)) for i, s in zip(items.reshape(-1), scores.reshape(-1))]


def _pctr(r: grpcclient.InferResult) -> np.ndarray | None:
    p = r.as_numpy("pctr")
    return None if p is None else p.reshape(-1).astype(np.float64)
