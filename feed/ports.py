"""What the feed's request handling needs from the outside world, as protocols: the event
store (Redis in production, ``event_store.EventStore``) and the recommender (Triton,
``recommender.TritonRecommender``). ``handlers.FeedApp`` is written against these, so it runs
in unit tests with in-memory fakes; the adapters translate their libraries' errors into the
two exceptions below."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from genrec.feed.events import BatchPlan
from genrec.feed.history import History


class StoreUnavailable(Exception):
    """The store did not answer (down, timed out, or a reply was lost)."""


class RecommendFailed(Exception):
    def __init__(self, reason: str, detail: str, seconds: float = 0.0) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason  # "timeout" | "rejected" | "unavailable"
        self.seconds = seconds  # how long the failed call took


@dataclass(frozen=True)
class UserState:
    history: History
    negatives: list[int]  # newest first
    segment: int


@dataclass(frozen=True)
class BatchResult:
    status: str  # "applied" | "replay" | "conflict"
    answer: dict[str, Any] | None


class FeedStore(Protocol):
    async def ping(self) -> bool: ...

    async def user_state(self, user_id: str, n_items: int, n_devices: int, max_negatives: int) -> UserState: ...

    async def get_page(self, user_id: str, session_id: str, page: int) -> bytes | None: ...

    async def put_page(self, user_id: str, session_id: str, page: int, body: bytes, ttl_s: int) -> bytes: ...

    async def recorded_batch(self, user_id: str, idempotency_key: str, body_hash: str) -> BatchResult | None: ...

    async def apply_batch(self, user_id: str, idempotency_key: str | None, body_hash: str, plan: BatchPlan, now: float) -> BatchResult: ...


class Recommender(Protocol):
    async def ready(self) -> bool: ...

    async def recommend(
        self, user_id: str, h: History, segment: int, device: int, excluded: list[int], top_k: int, version: str = ""
    ) -> tuple[list[tuple[int, float]], float]: ...

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
    ) -> tuple[list[tuple[int, float]], np.ndarray | None, float]: ...
