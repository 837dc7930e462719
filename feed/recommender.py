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

    async def recommend(
        self, user_id: str, h: History, segment: int, device: int, excluded: list[int], top_k: int
    ) -> tuple[list[tuple[int, float]], float]:
        """(item, score) best first, and the seconds the call took. Raises RecommendFailed."""
        request_time = float(int(max(time.time(), float(h.times[-1]) + 1.0 if len(h) else 0.0)))  # whole seconds
        inputs = [
            _input("history_items", h.items.astype(np.int64), "INT64"),
            _input("history_actions", h.actions.astype(np.int64), "INT64"),
            _input("history_timestamps", h.times.astype(np.float64), "FP64"),
            _input("history_devices", h.devices.astype(np.int64), "INT64"),
            _input("user_id", np.array([user_id.encode()], dtype=np.object_), "BYTES"),
            _input("segment", np.array([segment], dtype=np.int64), "INT64"),
            _input("ctx_device", np.array([device], dtype=np.int64), "INT64"),
            _input("request_time", np.array([request_time], dtype=np.float64), "FP64"),
        ]
        if excluded:
            inputs.append(_input("excluded_items", np.asarray(excluded, dtype=np.int64), "INT64"))
        outputs = [grpcclient.InferRequestedOutput("items"), grpcclient.InferRequestedOutput("scores")]
        t0 = time.perf_counter()
        try:
            r = await self.client.infer(MODEL, inputs, outputs=outputs, parameters={"top_k": top_k}, client_timeout=self.timeout_s)
        except InferenceServerException as e:
            status = str(e.status() or "")
            reason = "timeout" if "DEADLINE" in status else "rejected" if "INVALID_ARGUMENT" in status else "unavailable"
            raise RecommendFailed(reason, e.message() or str(e), time.perf_counter() - t0) from e
        except Exception as e:  # a broken channel must not become a 500
            raise RecommendFailed("unavailable", str(e), time.perf_counter() - t0) from e
        items, scores = r.as_numpy("items"), r.as_numpy("scores")
        if items is None or scores is None:
            raise RecommendFailed("unavailable", "recommend answered without items/scores")
        return [(int(i), float(s)) for i, s in zip(items, scores)], time.perf_counter() - t0

    async def close(self) -> None:
        await self.client.close()
