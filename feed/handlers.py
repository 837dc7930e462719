"""What each route does, over the store, Triton and the catalogue; the BentoML service only
parses, calls these and wraps the answer in the envelope. Errors are ``FeedError``s."""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from genrec.data.schema import ItemKind
from genrec.feed import metrics
from genrec.feed.blend import Placed, blend, last_product_position, reason_for
from genrec.feed.catalogue import FeedCatalogue
from genrec.feed.cursor import Cursor, CursorCodec, CursorError
from genrec.feed.envelope import ErrorKind, FeedError
from genrec.feed.events import DEVICES, BatchPlan, Event, body_hash, plan_batch
from genrec.feed.history import History
from genrec.feed.logs import log_event, request_id_var
from genrec.feed.ports import FeedStore, Recommender, RecommendFailed, StoreUnavailable, UserState
from genrec.feed.tokens import EventTokens
from genrec.settings import FeedConfig

log = logging.getLogger("genrec.feed")


@dataclass
class FeedAnswer:
    data: dict[str, Any] | bytes  # bytes: a stored page, replayed as it was served
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class FeedApp:
    cfg: FeedConfig
    catalogue: FeedCatalogue
    n_devices: int
    max_excluded: int
    store: FeedStore
    triton: Recommender
    cursors: CursorCodec
    tokens: EventTokens

    async def feed(self, user_id: str, count: int, cursor_token: str | None, device: str) -> FeedAnswer:
        now = time.time()
        if cursor_token:
            try:
                cursor = self.cursors.decode(cursor_token, user_id, now)
            except CursorError as e:
                raise FeedError(ErrorKind.INVALID_CURSOR, f"cursor: {e}") from e
        else:
            cursor = self.cursors.first(user_id, secrets.token_urlsafe(12), now)
        degraded: list[str] = []
        state = await self._user_state(user_id, degraded)
        if cursor.page > 0 and state is not None:
            stored = await self._stored_page(user_id, cursor)
            if stored is not None:
                return FeedAnswer(stored, {"x-feed-replayed": "1"})
        history = state.history if state else History.empty()
        negatives = state.negatives if state else []
        excluded = list(dict.fromkeys(list(cursor.seen) + negatives))
        ctx_device = DEVICES.get(device, 0)
        fallback: str | None = None
        timing: dict[str, str] = {}
        try:
            candidates, seconds = await self.triton.recommend(
                user_id, history, state.segment if state else 0, ctx_device, excluded[: self.max_excluded], self.cfg.candidates
            )
            metrics.TRITON.labels(outcome="ok").observe(seconds)
            timing = {"x-triton-ms": f"{seconds * 1e3:.2f}"}  # lets callers and bench.feed_latency split the time
        except RecommendFailed as e:
            metrics.TRITON.labels(outcome=e.reason).observe(e.seconds)
            fallback = f"triton_{e.reason}"
            metrics.FALLBACKS.labels(reason=fallback).inc()
            log_event(log, logging.WARNING, "recommend failed; serving the fallback feed", reason=e.reason, detail=str(e)[:300])
            pop = self.catalogue.organic_popular[: self.cfg.candidates + len(excluded)]
            candidates = [(int(i), float(self.catalogue.log_popularity[i])) for i in pop]
        page = blend(candidates, self.catalogue.kind, excluded, count, self.cfg.product_every, cursor.offset, cursor.last_product)
        mode = "fallback" if fallback else ("cold_start" if len(history) == 0 else "personal")
        data = self._page_data(user_id, cursor, page, history, mode, fallback, degraded, now)
        for p in page:
            metrics.ITEMS.labels(type=p.type).inc()
        if cursor.page > 0 and state is not None:
            body = json.dumps(data, separators=(",", ":")).encode()
            try:
                stored = await self.store.put_page(user_id, cursor.session_id, cursor.page, body, self.cfg.cursor_ttl_s)
                return FeedAnswer(stored, {"x-feed-replayed": "1"} if stored != body else timing)
            except StoreUnavailable as e:
                self._redis_error("put_page", e)
        return FeedAnswer(data, timing)

    def _page_data(
        self,
        user_id: str,
        cursor: Cursor,
        page: list[Placed],
        history: History,
        mode: str,
        fallback: str | None,
        degraded: list[str],
        now: float,
    ) -> dict[str, Any]:
        trace_id = request_id_var.get()
        cats = {int(c) for c in self.catalogue.category[history.items[-50:]]} if len(history) else set()
        items = [
            {
                "type": p.type,
                "id": p.item_id,
                "score": round(p.score, 6),
                "position": p.position,
                "reason": reason_for(p.item_id, self.catalogue.kind, self.catalogue.category, cats, mode),
                "display": self.catalogue.display(p.item_id),
                "tracking": {"event_token": self.tokens.issue(user_id, p.item_id, trace_id, now), "trace_id": trace_id},
            }
            for p in page
        ]
        nxt = self.cursors.following(cursor, [p.item_id for p in page], last_product_position(page, cursor.last_product))
        return {
            "items": items,
            "next_cursor": self.cursors.encode(nxt) if nxt else None,
            "session_id": cursor.session_id,
            "page": cursor.page,
            "fallback": fallback is not None,
            "fallback_reason": fallback,
            "cold_start": len(history) == 0,
            "degraded": degraded,
        }

    async def _user_state(self, user_id: str, degraded: list[str]) -> UserState | None:
        try:
            return await self.store.user_state(user_id, self.catalogue.n_items, self.n_devices, self.max_excluded)
        except StoreUnavailable as e:
            self._redis_error("user_state", e)
            degraded.append("history_unavailable")
            return None

    async def _stored_page(self, user_id: str, cursor: Cursor) -> bytes | None:
        try:
            return await self.store.get_page(user_id, cursor.session_id, cursor.page)
        except StoreUnavailable as e:
            self._redis_error("get_page", e)
            return None

    def _redis_error(self, operation: str, e: Exception) -> None:
        metrics.REDIS_ERRORS.labels(operation=operation).inc()
        log_event(log, logging.WARNING, "redis call failed", operation=operation, error=str(e)[:300])

    async def events(self, user_id: str, events: list[Event], idempotency_key: str | None) -> FeedAnswer:
        now = time.time()
        digest = body_hash(user_id, events)
        try:
            recorded = None if idempotency_key is None else await self.store.recorded_batch(user_id, idempotency_key, digest)
            if recorded is not None:
                result = recorded
            else:
                result = await self.store.apply_batch(user_id, idempotency_key, digest, self._plan(user_id, events, now), now)
        except StoreUnavailable as e:
            self._redis_error("apply_batch", e)
            metrics.EVENTS.labels(outcome="unavailable").inc()
            # a reply can be lost after Redis ran the script, so "not stored" cannot be promised:
            # the same Idempotency-Key makes the retry safe either way
            raise FeedError(
                ErrorKind.UNAVAILABLE,
                "the event store did not confirm the write; retry with the same Idempotency-Key (applied at most once)",
            ) from e
        if result.status == "conflict":
            metrics.EVENTS.labels(outcome="conflict").inc()
            raise FeedError(ErrorKind.IDEMPOTENCY_CONFLICT, "Idempotency-Key was already used with a different body")
        replay = result.status == "replay"
        metrics.EVENTS.labels(outcome="replayed" if replay else "accepted").inc()
        return FeedAnswer(result.answer or {}, {"idempotent-replayed": "true"} if replay else {})

    def _plan(self, user_id: str, events: list[Event], now: float) -> BatchPlan:
        try:
            return plan_batch(user_id, events, self.catalogue.n_items, self.tokens, now, self.cfg.max_events_per_batch)
        except FeedError:
            metrics.EVENTS.labels(outcome="rejected").inc()
            raise

    def item(self, item_id: int) -> dict[str, Any]:
        self._known(item_id)
        return {
            "id": item_id,
            "type": "product" if self.catalogue.kind[item_id] == ItemKind.PRODUCT else "content",
            "display": self.catalogue.display(item_id),
        }

    async def similar(self, item_id: int, k: int, user_id: str | None) -> dict[str, Any]:
        self._known(item_id)
        excluded: set[int] = set()
        degraded: list[str] = []
        if user_id:
            state = await self._user_state(user_id, degraded)
            excluded = set(state.negatives) if state else set()
        found = self.catalogue.similar(item_id, k, excluded)
        return {
            "id": item_id,
            "items": [{"id": i, "score": round(s, 6), "display": self.catalogue.display(i)} for i, s in found],
            "degraded": degraded,
        }

    def _known(self, item_id: int) -> None:
        if not self.catalogue.knows(item_id) or self.catalogue.kind[item_id] == ItemKind.AD:
            raise FeedError(ErrorKind.NOT_FOUND, f"item {item_id} is not in the catalogue")

    async def ready(self) -> bool:
        if not await self.triton.ready():
            return False
        try:
            return await self.store.ping()
        except StoreUnavailable:
            return False
