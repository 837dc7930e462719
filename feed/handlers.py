"""What each route does, over the store, Triton and the catalogue; the BentoML service only
parses, calls these and wraps the answer in the envelope. Errors are ``FeedError``s."""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from genrec.ads.pacing import utc_day
from genrec.ads.placement import last_ad_position
from genrec.ads.serving import AdCandidates, AdOutcome, AdServer
from genrec.ads.state import AdState, Click
from genrec.data.schema import ItemKind
from genrec.feed import metrics
from genrec.feed.blend import Placed, blend, last_product_position, reason_for
from genrec.feed.canary import NEWEST, VersionRouter
from genrec.feed.catalogue import FeedCatalogue
from genrec.feed.cursor import Cursor, CursorCodec, CursorError
from genrec.feed.envelope import ErrorKind, FeedError
from genrec.feed.events import DEVICES, AdClick, BatchPlan, Event, body_hash, plan_batch
from genrec.feed.history import History
from genrec.feed.logs import log_event, request_id_var
from genrec.feed.ports import FeedStore, Recommender, RecommendFailed, StoreUnavailable, UserState
from genrec.feed.tokens import AdClaim, EventTokens
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
    ads: AdServer | None = None  # None: ads off (GENREC_ADS__ENABLED=false)
    ad_state: AdState | None = None  # click charges (the same Redis state the AdServer reads)
    versions: VersionRouter | None = None  # the canary split of recommend versions
    ads_ensemble: bool = True  # score the ads inside Triton's feed_candidates ensemble (one round trip)

    async def feed(self, user_id: str, count: int, cursor_token: str | None, device: str, ab_bucket: str | None = None) -> FeedAnswer:
        now = time.time()
        bucket, ad_every = 0, 0
        if self.ads is not None:
            try:
                bucket, ad_every = self.ads.bucket(user_id, ab_bucket)
            except ValueError as e:
                raise FeedError(ErrorKind.VALIDATION, str(e)) from e
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
        route = await self.versions.route(user_id) if self.versions is not None else NEWEST
        version = route.recommend
        ads = await self._ad_candidates(user_id, history.items if state else None, bucket, ad_every, now, excluded, degraded)
        if ads is not None and route.ad_ctr is None:  # no pCTR model known to pair with this recommend version
            ads = None
            degraded.append("ads_unavailable")
        fallback: str | None = None
        timing: dict[str, str] = {}
        pctr = None
        segment, asked = (state.segment if state else 0), excluded[: self.max_excluded]
        try:
            if ads is not None and ads.rows.size:
                candidates, pctr, seconds = await self.triton.recommend_with_ads(
                    user_id,
                    history,
                    segment,
                    ctx_device,
                    asked,
                    self.cfg.candidates,
                    ads.features,
                    version,
                    self.ads_ensemble and route.ensemble,
                    route.ad_ctr or "",
                )
            else:
                candidates, seconds = await self.triton.recommend(
                    user_id, history, segment, ctx_device, asked, self.cfg.candidates, version
                )
            metrics.TRITON.labels(outcome="ok", version=route.label).observe(seconds)
            timing = {"x-triton-ms": f"{seconds * 1e3:.2f}"}  # lets callers and bench.feed_latency split the time
        except RecommendFailed as e:
            metrics.TRITON.labels(outcome=e.reason, version=route.label).observe(e.seconds)
            fallback = f"triton_{e.reason}"
            metrics.FALLBACKS.labels(reason=fallback).inc()
            log_event(log, logging.WARNING, "recommend failed; serving the fallback feed", reason=e.reason, detail=str(e)[:300])
            pop = self.catalogue.organic_popular[: self.cfg.candidates + len(excluded)]
            candidates = [(int(i), float(self.catalogue.log_popularity[i])) for i in pop]
        spare = count // 2 + 2  # organic items an ad can push off the page, or a refused ad's stand-ins
        organic = blend(
            candidates, self.catalogue.kind, excluded, count + spare, self.cfg.product_every, cursor.offset, cursor.last_product
        )
        page, outcome = organic[:count], AdOutcome("off" if self.ads is None else "no_candidates")
        if ads is None and self.ads is not None and "ads_unavailable" in degraded:
            outcome = AdOutcome("unavailable")
        elif ads is not None and self.ads is not None:
            outcome = AdOutcome("no_candidates" if ads.rows.size == 0 else "unavailable")
            if pctr is not None:
                trace = request_id_var.get()
                page, outcome = await self.ads.fill(
                    user_id, organic, ads, pctr, count, cursor.offset, cursor.last_ad, cursor.last_product, trace, now
                )
            if outcome.status == "unavailable" and "ads_unavailable" not in degraded:
                degraded.append("ads_unavailable")
        self._ad_metrics(ads, outcome)
        mode = "fallback" if fallback else ("cold_start" if len(history) == 0 else "personal")
        data = self._page_data(user_id, cursor, page, history, mode, fallback, degraded, now, outcome, bucket)
        if self.versions is not None:
            data["model_version"] = route.label
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
        ads: AdOutcome | None = None,
        bucket: int = 0,
    ) -> dict[str, Any]:
        trace_id = request_id_var.get()
        cats = {int(c) for c in self.catalogue.category[history.items[-50:]]} if len(history) else set()
        wins = ads.wins if ads is not None else {}
        items = []
        for p in page:
            win = wins.get(p.item_id) if p.type == "ad" else None
            claim = AdClaim(win.campaign, win.price, bucket) if win is not None else None
            item: dict[str, Any] = {
                "type": p.type,
                "id": p.item_id,
                "score": round(p.score, 6),
                "position": p.position,
                "reason": p.reason if win is not None else reason_for(p.item_id, self.catalogue.kind, self.catalogue.category, cats, mode),
                "display": self.catalogue.display(p.item_id),
                "tracking": {"event_token": self.tokens.issue(user_id, p.item_id, trace_id, now, claim), "trace_id": trace_id},
            }
            if win is not None:
                item["ad"] = {
                    "campaign": win.campaign,
                    "bid_cpc": round(win.bid, 4),
                    "pctr": round(win.pctr, 6),
                    "ecpm": round(win.ecpm * 1000, 4),
                    "price_cpc": round(win.price, 6),  # what the token signs and a click is charged (micro-units)
                }
            items.append(item)
        nxt = self.cursors.following(
            cursor, [p.item_id for p in page], last_product_position(page, cursor.last_product), last_ad_position(page, cursor.last_ad)
        )
        return {
            "items": items,
            "next_cursor": self.cursors.encode(nxt) if nxt else None,
            "session_id": cursor.session_id,
            "page": cursor.page,
            "fallback": fallback is not None,
            "fallback_reason": fallback,
            "cold_start": len(history) == 0,
            "degraded": degraded,
            "ab_bucket": bucket,
        }

    async def _ad_candidates(
        self, user_id: str, history_items: Any, bucket: int, ad_every: int, now: float, excluded: list[int], degraded: list[str]
    ) -> AdCandidates | None:
        """The ads this request may auction; None when ads are off or there is nothing to auction,
        and fail closed (``ads_unavailable``) when the history or the ad state cannot be read."""
        if self.ads is None:
            return None
        try:
            if history_items is None:
                raise StoreUnavailable("the user's history could not be read")
            return await self.ads.prepare(user_id, history_items, bucket, ad_every, now, excluded)
        except StoreUnavailable as e:
            self._redis_error("ad_snapshot", e)
            degraded.append("ads_unavailable")
            return None

    def _ad_metrics(self, ads: AdCandidates | None, outcome: AdOutcome) -> None:
        if self.ads is None:
            return
        metrics.AD_AUCTIONS.labels(outcome=outcome.status).inc()
        if ads is None:
            return
        metrics.AD_ELIGIBLE.observe(outcome.eligible if outcome.status != "no_candidates" else 0)
        for reason, n in ads.refused.items():
            if n:
                metrics.AD_REFUSALS.labels(reason=reason).inc(n)
        if outcome.cap_races:
            metrics.AD_REFUSALS.labels(reason="cap_race").inc(outcome.cap_races)
        for r in ads.pacing_ratios:
            metrics.AD_PACING_RATIO.observe(r)
        for w in outcome.wins.values():
            metrics.ADS_SERVED.labels(bucket=str(ads.bucket)).inc()
            metrics.AD_ECPM.observe(w.ecpm * 1000)

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
                plan = self._plan(user_id, events, now)
                await self._charge(plan, now)  # first: a click is acknowledged only once it is charged
                result = await self.store.apply_batch(user_id, idempotency_key, digest, plan, now)
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

    async def _charge(self, plan: BatchPlan, now: float) -> None:
        """Charge the batch's ad clicks (each once per event token, in its campaign's slot) and
        note how many are charged. Raises StoreUnavailable: nothing of the batch is then
        acknowledged, and a retry cannot charge twice. Not charged, and counted as such: a click
        past the attribution window (``click_window_s``), on a campaign no longer in the
        catalogue, or while ads are off."""
        if not plan.ad_clicks:
            return
        by_day: dict[str, list[tuple[AdClick, Click]]] = {}
        for c in plan.ad_clicks:
            if self.ads is None or self.ad_state is None:
                metrics.AD_CLICKS.labels(outcome="ads_off").inc()
                continue
            if now - c.issued_at > self.ads.cfg.click_window_s:
                metrics.AD_CLICKS.labels(outcome="late").inc()
                continue
            try:
                budget = self.ads.inventory.campaign_budget(c.claim.campaign)
            except KeyError:
                metrics.AD_CLICKS.labels(outcome="unknown_campaign").inc()
                continue
            by_day.setdefault(utc_day(c.issued_at), []).append((c, Click(c.claim.campaign, c.token_digest, c.claim.price, budget)))
        charged = 0
        for day, clicks in by_day.items():
            assert self.ad_state is not None
            outcomes = await self.ad_state.charge_clicks([k for _, k in clicks], day, now)
            for (c, _), outcome in zip(clicks, outcomes):
                metrics.AD_CLICKS.labels(outcome=outcome).inc()
                if outcome == "charged":
                    metrics.AD_REVENUE.inc(c.claim.price)
                    metrics.AD_CPC.observe(c.claim.price)
                charged += outcome in ("charged", "duplicate")  # a duplicate was charged by an earlier try
        plan.ad_clicks_charged = charged

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
