"""The feed service: ``bentoml serve genrec.feed.service:FeedService --port 3000``.

Thin adapters: parse (typed parameters, so BentoML validates them and documents them in its
OpenAPI at /docs.json), call ``handlers.FeedApp``, wrap the answer in the envelope. Settings
come from ``GENREC_FEED__<FIELD>`` (genrec.settings.FeedConfig), read at import.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import bentoml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.responses import Response

from genrec.ads.inventory import AdInventory
from genrec.ads.serving import AdServer
from genrec.ads.state import AdState
from genrec.feed import metrics
from genrec.feed.canary import VersionRouter
from genrec.feed.catalogue import FeedCatalogue, latest_run
from genrec.feed.cursor import MAX_CURSOR_CHARS, CursorCodec
from genrec.feed.envelope import ErrorKind, FeedError, error_body, ok_json
from genrec.feed.event_store import EventStore
from genrec.feed.events import Device, Event, UserId
from genrec.feed.handlers import FeedAnswer, FeedApp
from genrec.feed.http import FeedMiddleware, items_app
from genrec.feed.logs import feed_logger, log_event, request_id_var
from genrec.feed.metrics import bounded_exposition
from genrec.feed.ports import UserState
from genrec.feed.recommender import TritonRecommender
from genrec.feed.signing import DEV_SIGNING_KEY
from genrec.feed.tokens import EventTokens
from genrec.feed.warmup import WarmupPlan, WarmupReport, warm_version
from genrec.settings import Config, env_overrides, with_overrides

_SETTINGS = with_overrides(Config(), {k: v for k, v in env_overrides().items() if k.split(".")[0] in ("feed", "ads")})
CFG, ADS = _SETTINGS.feed, _SETTINGS.ads
log = feed_logger()
_APP: FeedApp | None = None
Short = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


Count = Annotated[int, Field(ge=1, le=CFG.max_count)]
CursorText = Annotated[str, Field(min_length=1, max_length=MAX_CURSOR_CHARS)]
EventBatch = Annotated[list[Event], Field(min_length=1, max_length=CFG.max_events_per_batch)]


class FeedRequest(BaseModel):
    """The body of POST /v1/feed (the same fields as ``FeedService.feed``), checked by the
    middleware first so a 422 names every bad field."""

    model_config = ConfigDict(extra="ignore")
    user_id: UserId
    count: Count = CFG.default_count
    cursor: CursorText | None = None
    scene: Short = "home"
    device: Device = "mobile"
    geo: Short | None = None
    ab_bucket: Short | None = None


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    user_id: UserId
    events: EventBatch


def build_app() -> FeedApp:
    run = Path(CFG.run_dir) if CFG.run_dir else latest_run(Path("artifacts/runs"))
    manifest = json.loads((run / "manifest.json").read_text())
    pipeline = json.loads((run / "config.json").read_text())["pipeline"]
    catalogue = FeedCatalogue.load(run, Path(CFG.model_repository))
    if CFG.signing_key == DEV_SIGNING_KEY:
        log_event(
            log,
            logging.WARNING,
            "GENREC_FEED__SIGNING_KEY is the development default: cursors and event tokens can be forged; set a secret",
        )
    store = EventStore(
        CFG.redis_url,
        CFG.redis_timeout_s,
        int(pipeline["max_history_events"]),
        CFG.max_impressions,
        CFG.max_relations,
        CFG.idempotency_ttl_s,
        CFG.active_users_cap,
    )
    triton = TritonRecommender(CFG.triton_grpc_url, CFG.triton_timeout_s)
    n_devices, max_excluded = int(manifest["n_devices"]), int(pipeline["max_excluded_items"])
    warm = build_warmer(store, triton, catalogue.n_items, n_devices) if CFG.warm_users > 0 else None
    ads, ad_state = build_ads(run, catalogue)
    log_event(
        log,
        logging.INFO,
        "feed service set up",
        run=str(run),
        items=catalogue.n_items,
        vectors=catalogue.source,
        triton=CFG.triton_grpc_url,
        ads=len(ads.inventory) if ads else 0,
    )
    return FeedApp(
        CFG,
        catalogue,
        n_devices,
        max_excluded,
        store,
        triton,
        CursorCodec(CFG.signing_key, CFG.cursor_ttl_s, CFG.max_session_items),
        EventTokens(CFG.signing_key, CFG.event_token_ttl_s),
        ads=ads,
        ad_state=ad_state,
        versions=VersionRouter(CFG.canary_share, triton.ready_versions, Path(CFG.model_repository), CFG.versions_refresh_s, warm),
        ads_ensemble=ADS.ensemble,
    )


def build_warmer(store: EventStore, triton: TritonRecommender, n_items: int, n_devices: int) -> Callable[[int], Awaitable[WarmupReport]]:
    """The deploy warm-up of one new recommend version (``warmup.warm_version``) over this
    process's Redis and Triton clients, counted in the ``feed_warmup_*`` metrics and logged."""
    plan = WarmupPlan(CFG.warm_users, CFG.warm_rate_per_s, CFG.warm_budget_s, CFG.warm_concurrency)

    async def user_state(user_id: str) -> UserState:
        return await store.user_state(user_id, n_items, n_devices, 0, mark_active=False)  # a warm-up is not a visit

    async def encode(user_id: str, state: UserState, version: str) -> None:
        device = int(state.history.devices[-1])
        await triton.recommend(user_id, state.history, state.segment, device, [], 1, version)  # top_k 1: the states are the point

    async def warm(version: int) -> WarmupReport:
        log_event(log, logging.INFO, "warming a new recommend version before routing to it", version=version, users=plan.users)
        report = await warm_version(
            str(version), plan, store.recently_active, user_state, encode, lambda o: metrics.WARMUP_USERS.labels(outcome=o).inc()
        )
        metrics.WARMUP_RUNS.labels(outcome=report.outcome).inc()
        metrics.WARMUP_DURATION.observe(report.seconds)
        log_event(
            log,
            logging.INFO if report.outcome in ("done", "no_users") else logging.WARNING,
            "recommend version warmed: routing to it",
            version=version,
            outcome=report.outcome,
            asked=report.asked,
            warmed=report.warmed,
            failed=report.failed,
            skipped=report.skipped,
            seconds=round(report.seconds, 2),
            error=report.error,
        )
        return report

    return warm


def build_ads(run: Path, catalogue: FeedCatalogue) -> tuple[AdServer | None, AdState | None]:
    """The ad server over the run's inventory and pCTR feature table, or None when ads are off
    or the run has no pCTR model (logged: the feed then serves content and products only)."""
    if not ADS.enabled:
        return None, None
    from genrec.ad_ctr import AdFeatureTable, ad_feature_rows

    table_path = run / "ad_ctr.npz"
    if not table_path.exists():
        log_event(log, logging.WARNING, "the run has no pCTR model (ad_ctr.npz): serving no ads", run=str(run))
        return None, None
    table = AdFeatureTable.load(table_path)
    state = AdState.from_config(ADS, ADS.redis_url or CFG.redis_url, CFG.redis_timeout_s)
    server = AdServer(
        AdInventory.from_item_table(run),
        ADS,
        state,
        lambda history, items: ad_feature_rows(history, items, table),
        catalogue.category,
    )
    return server, state


def _handlers() -> FeedApp:
    if _APP is None:
        raise FeedError(ErrorKind.UNAVAILABLE, "the service is starting")
    return _APP


def _answer(ctx: bentoml.Context, answer: FeedAnswer) -> Any:
    """The envelope as a ready JSON response. BentoML passes a Starlette ``Response`` through
    as it is; for a returned dict it derives the output model's JSON schema on every response
    (profiled: the largest single cost of the service's own time per request)."""
    for k, v in answer.headers.items():
        ctx.response.headers[k] = v
    return Response(ok_json(answer.data, request_id_var.get()), media_type="application/json")


def _error(ctx: bentoml.Context, e: FeedError) -> Any:
    ctx.response.status_code = e.status
    return Response(json.dumps(error_body(e.kind, e.msg, request_id_var.get())), e.status, media_type="application/json")


@bentoml.asgi_app(items_app(_handlers), path="/v1/items")
@bentoml.service(
    name="genrec-feed",
    traffic={"timeout": CFG.request_timeout_s, "max_concurrency": CFG.max_concurrency},
    http={"port": CFG.port},
    # FeedMiddleware writes one structured JSON line per request, with its request id; BentoML's
    # own access log would repeat it in another format
    logging={"access": {"enabled": False}},
    workers=1,
)
class FeedService:
    def __init__(self) -> None:
        global _APP
        _APP = self.app = build_app()

    async def __is_ready__(self) -> bool:
        return await self.app.ready()

    def __metrics__(self, content: str) -> str:
        return bounded_exposition(content)

    @bentoml.api(route="/v1/feed")
    async def feed(
        self,
        ctx: bentoml.Context,
        user_id: UserId,
        count: Count = CFG.default_count,
        cursor: CursorText | None = None,
        scene: Short = "home",
        device: Device = "mobile",
        geo: Short | None = None,
        ab_bucket: Short | None = None,
    ) -> dict[str, Any]:
        """A page of the user's feed: content and products, positioned, with a cursor for the next page."""
        try:
            return _answer(ctx, await self.app.feed(user_id, count, cursor, device, ab_bucket))
        except FeedError as e:
            return _error(ctx, e)

    @bentoml.api(route="/v1/events")
    async def events(
        self,
        ctx: bentoml.Context,
        user_id: UserId,
        events: EventBatch,
    ) -> dict[str, Any]:
        """A batch of one user's events, stored in one atomic step; idempotent under an Idempotency-Key header."""
        try:
            key = ctx.request.headers.get("idempotency-key")
            if key is not None and not _valid_key(key):
                raise FeedError(ErrorKind.BAD_REQUEST, "Idempotency-Key: 1-128 characters of A-Z a-z 0-9 _ . : -")
            return _answer(ctx, await self.app.events(user_id, events, key))
        except FeedError as e:
            return _error(ctx, e)


def _valid_key(key: str) -> bool:
    import re

    return bool(re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", key))


_service: Any = FeedService  # a bentoml Service (typed as the class by the decorator)
_service.add_asgi_middleware(
    FeedMiddleware,
    max_body_bytes=CFG.max_body_bytes,
    validators={"/v1/feed": FeedRequest.model_validate, "/v1/events": EventsRequest.model_validate},
)
