"""Client for Triton's ``recommend`` model (KServe v2, gRPC or HTTP).

    from genrec.client.recommend_client import RecommendClient
    c = RecommendClient("localhost:8001")                      # gRPC; "localhost:8000", protocol="http"
    r = c.recommend(items=[12, 7], actions=[0, 1], timestamps=[1.7e9, 1.7e9 + 60], devices=[0, 0], user_id="u42")
    r.items, r.scores

Errors come back as ``RecommendError`` with the server's message and whether the request itself
was at fault (``invalid_argument``: fix the request, do not retry).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MODEL = "recommend"


@dataclass(frozen=True)
class RecommendResult:
    items: np.ndarray
    scores: np.ndarray


class RecommendError(RuntimeError):
    def __init__(self, message: str, invalid_argument: bool) -> None:
        super().__init__(message)
        self.invalid_argument = invalid_argument


class RecommendClient:
    def __init__(self, url: str, protocol: str = "grpc", timeout_s: float = 10.0) -> None:
        if protocol == "grpc":
            import tritonclient.grpc as module
        elif protocol == "http":
            import tritonclient.http as module
        else:
            raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
        self.module, self.protocol, self.timeout_s = module, protocol, timeout_s
        self.client = module.InferenceServerClient(url)

    def _tensor(self, name: str, value: np.ndarray, dtype: str):
        t = self.module.InferInput(name, list(value.shape), dtype)
        t.set_data_from_numpy(value)
        return t

    def recommend(
        self,
        items: Sequence[int] | np.ndarray,
        actions: Sequence[int] | np.ndarray,
        timestamps: Sequence[float] | np.ndarray,
        devices: Sequence[int] | np.ndarray,
        *,
        user_id: str | None = None,
        segment: int | None = None,
        ctx_device: int | None = None,
        request_time: float | None = None,
        excluded: Sequence[int] | np.ndarray | None = None,
        beam_width: int | str | None = None,
        ann_candidates: int | None = None,
        max_candidates: int | None = None,
        top_k: int | None = None,
        model_version: str = "",
    ) -> RecommendResult:
        ins = [
            self._tensor("history_items", np.asarray(items, dtype=np.int64).reshape(-1), "INT64"),
            self._tensor("history_actions", np.asarray(actions, dtype=np.int64).reshape(-1), "INT64"),
            self._tensor("history_timestamps", np.asarray(timestamps, dtype=np.float64).reshape(-1), "FP64"),
            self._tensor("history_devices", np.asarray(devices, dtype=np.int64).reshape(-1), "INT64"),
        ]
        if user_id is not None:
            ins.append(self._tensor("user_id", np.array([user_id.encode()], dtype=object), "BYTES"))
        for name, v, dt, np_dt in (
            ("segment", segment, "INT64", np.int64),
            ("ctx_device", ctx_device, "INT64", np.int64),
            ("request_time", request_time, "FP64", np.float64),
        ):
            if v is not None:
                ins.append(self._tensor(name, np.array([v], dtype=np_dt), dt))
        if excluded is not None:
            ins.append(self._tensor("excluded_items", np.asarray(excluded, dtype=np.int64).reshape(-1), "INT64"))
        params = {
            k: (",".join(map(str, v)) if isinstance(v, list | tuple) else v)
            for k, v in (
                ("beam_width", beam_width),
                ("ann_candidates", ann_candidates),
                ("max_candidates", max_candidates),
                ("top_k", top_k),
            )
            if v is not None
        }
        from tritonclient.utils import InferenceServerException

        try:
            kw = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {"timeout": int(self.timeout_s * 1e6)}
            res = self.client.infer(MODEL, ins, model_version=model_version, parameters=params or None, **kw)
        except InferenceServerException as e:
            status = str(e.status() or "")
            raise RecommendError(e.message() or str(e), "INVALID_ARG" in status or status == "400") from e
        return RecommendResult(res.as_numpy("items"), res.as_numpy("scores"))

    def close(self) -> None:
        self.client.close()
