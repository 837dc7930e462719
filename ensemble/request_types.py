"""The request and response types of the request path, shared by the Triton ``recommend`` model,
the PyTorch reference and the evaluation. Built by ``request_validation.validate_request``, so a
``RecommendRequest`` always carries checked inputs and its resolved options."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from genrec.data.schema import History


@dataclass(frozen=True)
class RequestOptions:
    """Per-request knobs, resolved against the config's defaults and caps."""

    beam_widths: tuple[int, int, int]
    ann_candidates: int
    max_candidates: int
    prerank_keep: int
    final_k: int
    follow_candidates: int = 0  # candidates from the transitions source (genrec.ensemble.transitions)
    follow_keep: int = 0  # pre-rank slots reserved for the candidates with the most transition votes


@dataclass(frozen=True)
class RecommendRequest:
    history: History
    options: RequestOptions
    segment: int = 0
    ctx_device: int = 0
    ctx_time: int | None = None  # request time; defaults to one minute after the last event
    user_id: str | None = None  # key of the encoder cache: valid UTF-8, at most PipelineConfig.max_user_id_bytes bytes
    excluded: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def request_time(self) -> int:
        if self.ctx_time is not None:
            return int(self.ctx_time)
        return int(self.history.timestamp[-1]) + 60 if len(self.history) else 0


@dataclass
class Recommendation:
    items: np.ndarray
    scores: np.ndarray
    stage_counts: dict[str, int] = field(default_factory=dict)
    stage_ms: dict[str, float] = field(default_factory=dict)
    cache: str = "off"  # encoder cache outcome: "hit", "miss" or "off"
    user_vector: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))  # (d,) the encoder's query vector
