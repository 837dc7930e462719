"""Typed client for the feed service (BentoML): ``/v1/feed``, ``/v1/events``, ``/v1/items/...``.

    from genrec.client import FeedClient, Event
    with FeedClient("http://localhost:3000") as feed:
        page = feed.feed("u1", count=10)                      # FeedPage: items, next_cursor, ...
        more = feed.feed("u1", cursor=page.next_cursor)
        feed.events("u1", [Event.of(page.items[0], "click")])  # one Idempotency-Key for all attempts

Every answer is the envelope ``{"code", "data", "msg", "request_id"}``; ``data`` comes back as a
pydantic model and an error as ``FeedApiError`` (message, envelope code, HTTP status, request id).
Connections are pooled (one ``httpx`` client per ``FeedClient``); each call has a timeout;
429/503 (``Retry-After`` honoured), refused connections and timeouts are retried with jittered
backoff, other 4xx never. An events post keeps its ``Idempotency-Key`` across retries, so a
retried batch is applied once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from genrec.client.errors import RETRYABLE_HTTP, FeedApiError
from genrec.client.retry import RetryPolicy, parse_retry_after

EventType = Literal["impression", "click", "like", "dislike", "hide", "purchase", "dwell"]


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow")  # a newer server may add fields


class Tracking(_Answer):
    event_token: str
    trace_id: str = ""


class AdInfo(_Answer):
    """What the auction decided for an ad: its click is charged ``price_cpc``."""

    campaign: int
    bid_cpc: float
    pctr: float
    ecpm: float  # per thousand impressions
    price_cpc: float


class FeedItem(_Answer):
    type: str  # content | product | ad
    id: int
    score: float = 0.0
    position: int = 0
    reason: str | None = None
    display: dict[str, Any] = Field(default_factory=dict)
    tracking: Tracking
    ad: AdInfo | None = None  # set on ads


class FeedPage(_Answer):
    items: list[FeedItem]
    next_cursor: str | None = None
    session_id: str = ""
    page: int = 0
    fallback: bool = False
    fallback_reason: str | None = None
    cold_start: bool = False
    degraded: list[str] = Field(default_factory=list)
    ab_bucket: int | None = None
    model_version: str | None = None
    request_id: str = ""
    replayed: bool = False  # a stored page served again (same cursor)


class Event(BaseModel):
    """One event of a ``/v1/events`` batch; ``event_token`` comes from the feed item's tracking."""

    model_config = ConfigDict(extra="forbid")
    type: EventType
    item_id: int
    event_token: str
    timestamp: float
    dwell_ms: int | None = None
    device: Literal["mobile", "desktop", "tablet"] | None = None

    @classmethod
    def of(cls, item: FeedItem, type: EventType, timestamp: float | None = None, **kw: Any) -> Event:
        return cls(type=type, item_id=item.id, event_token=item.tracking.event_token, timestamp=timestamp or time.time(), **kw)


class EventsResult(_Answer):
    accepted: int
    history_appended: int = 0
    impressions: int = 0
    likes: int = 0
    negatives: int = 0
    idempotency_key: str = ""
    replayed: bool = False  # the same key was seen before: nothing was applied twice
    request_id: str = ""


class Item(_Answer):
    id: int
    type: str
    display: dict[str, Any] = Field(default_factory=dict)


class SimilarItem(_Answer):
    id: int
    score: float
    display: dict[str, Any] = Field(default_factory=dict)


class SimilarItems(_Answer):
    id: int
    items: list[SimilarItem]
    degraded: list[str] = Field(default_factory=list)


def _raise_for(r: Any, rid: str) -> dict[str, Any]:
    """The envelope's ``data``, or ``FeedApiError``."""
    try:
        body = r.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or "code" not in body:
        raise FeedApiError(
            f"HTTP {r.status_code}: {r.text[:500]}",
            status=r.status_code,
            request_id=r.headers.get("x-request-id", rid),
            retryable=r.status_code in RETRYABLE_HTTP,
            retry_after_s=parse_retry_after(r.headers.get("retry-after")),
        )
    if r.status_code >= 400 or body.get("code") != 0:
        raise FeedApiError(
            str(body.get("msg") or f"HTTP {r.status_code}"),
            code=body.get("code"),
            status=r.status_code,
            request_id=body.get("request_id") or r.headers.get("x-request-id", rid),
            retryable=r.status_code in RETRYABLE_HTTP,
            retry_after_s=parse_retry_after(r.headers.get("retry-after")),
        )
    return {"data": body.get("data"), "request_id": body.get("request_id") or rid}


def _transport(e: Exception, rid: str) -> FeedApiError:
    import httpx

    code = "DEADLINE_EXCEEDED" if isinstance(e, httpx.TimeoutException) else "UNAVAILABLE"
    return FeedApiError(f"{type(e).__name__}: {e}", code=code, request_id=rid, retryable=True)


def _feed_body(user_id: str, count: int | None, cursor: str | None, **extra: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"user_id": user_id}
    if count is not None:
        body["count"] = count
    if cursor is not None:
        body["cursor"] = cursor
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def _events_body(user_id: str, events: list[Event | dict[str, Any]]) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "events": [(e if isinstance(e, Event) else Event(**e)).model_dump(exclude_none=True) for e in events],
    }


class _Route(NamedTuple):
    """What one call sends and how its answer is read: ``read(response, request_id)``."""

    method: str
    path: str
    read: Callable[[Any, str], Any]
    kw: dict[str, Any]


class _Calls:
    """Each route's request and answer; the sync and asyncio clients add only the I/O."""

    @staticmethod
    def feed(user_id: str, count: int | None, cursor: str | None, **extra: str | None) -> _Route:
        return _Route("POST", "/v1/feed", _Calls.page, {"json": _feed_body(user_id, count, cursor, **extra)})

    @staticmethod
    def page(r: Any, rid: str) -> FeedPage:
        env = _raise_for(r, rid)
        return FeedPage(**env["data"], request_id=env["request_id"], replayed=r.headers.get("x-feed-replayed") == "1")

    @staticmethod
    def events(user_id: str, events: list[Event | dict[str, Any]], idempotency_key: str | None) -> _Route:
        key = idempotency_key or uuid.uuid4().hex  # made once: every retry sends the same key
        kw = {"json": _events_body(user_id, events), "headers": {"Idempotency-Key": key}}
        return _Route("POST", "/v1/events", lambda r, rid: _Calls.events_result(r, rid, key), kw)

    @staticmethod
    def events_result(r: Any, rid: str, key: str) -> EventsResult:
        env = _raise_for(r, rid)
        replayed = r.headers.get("idempotent-replayed") == "true"
        return EventsResult(**env["data"], idempotency_key=key, replayed=replayed, request_id=env["request_id"])

    @staticmethod
    def item(item_id: int) -> _Route:
        return _Route("GET", f"/v1/items/{int(item_id)}", lambda r, rid: Item(**_raise_for(r, rid)["data"]), {})

    @staticmethod
    def similar(item_id: int, k: int, user_id: str | None) -> _Route:
        params: dict[str, Any] = {"k": k, **({"user_id": user_id} if user_id else {})}
        return _Route(
            "GET", f"/v1/items/{int(item_id)}/similar", lambda r, rid: SimilarItems(**_raise_for(r, rid)["data"]), {"params": params}
        )


def _headers(rid: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"X-Request-ID": rid, **(extra or {})}


def _limits(n: int) -> Any:
    import httpx

    return httpx.Limits(max_connections=n, max_keepalive_connections=n)


class _FeedBase:
    def __init__(self, base_url: str, timeout_s: float, retry: RetryPolicy | None, max_connections: int) -> None:
        self.base_url = base_url if "://" in base_url else f"http://{base_url}"
        self.timeout_s = timeout_s
        self.retry = retry if retry is not None else RetryPolicy()
        self.max_connections = max_connections

    def _request(self, route: _Route, rid: str) -> dict[str, Any]:
        """httpx ``request`` keyword arguments of ``route`` (the request id among its headers)."""
        return {**route.kw, "headers": _headers(rid, route.kw.get("headers"))}

    def _timeout(self, timeout_s: float | None, attempt: Any, rid: str) -> float:
        """The per-call timeout, capped at what is left of the retry policy's deadline."""
        expired = partial(FeedApiError, code="DEADLINE_EXCEEDED", request_id=rid, retryable=False)
        return self.retry.attempt_timeout(self.timeout_s if timeout_s is None else timeout_s, attempt, expired)


class FeedClient(_FeedBase):
    """Sync client over one pooled ``httpx.Client``."""

    def __init__(self, base_url: str, timeout_s: float = 2.0, retry: RetryPolicy | None = None, max_connections: int = 32) -> None:
        import httpx

        super().__init__(base_url, timeout_s, retry, max_connections)
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout_s, limits=_limits(max_connections))

    def _call(self, route: _Route, timeout_s: float | None, rid: str | None) -> Any:
        import httpx

        rid = rid or uuid.uuid4().hex
        kw = self._request(route, rid)
        for attempt in self.retry.sync():
            with attempt:
                try:
                    r = self.http.request(route.method, route.path, timeout=self._timeout(timeout_s, attempt, rid), **kw)
                except httpx.TransportError as e:
                    raise _transport(e, rid) from e
                return route.read(r, rid)
        raise AssertionError("unreachable")

    def feed(
        self,
        user_id: str,
        count: int | None = None,
        cursor: str | None = None,
        *,
        scene: str | None = None,
        device: str | None = None,
        geo: str | None = None,
        ab_bucket: str | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> FeedPage:
        return self._call(
            _Calls.feed(user_id, count, cursor, scene=scene, device=device, geo=geo, ab_bucket=ab_bucket), timeout_s, request_id
        )

    def events(
        self,
        user_id: str,
        events: list[Event | dict[str, Any]],
        idempotency_key: str | None = None,
        *,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> EventsResult:
        return self._call(_Calls.events(user_id, events, idempotency_key), timeout_s, request_id)

    def item(self, item_id: int, *, timeout_s: float | None = None, request_id: str | None = None) -> Item:
        return self._call(_Calls.item(item_id), timeout_s, request_id)

    def similar(
        self, item_id: int, k: int = 10, user_id: str | None = None, *, timeout_s: float | None = None, request_id: str | None = None
    ) -> SimilarItems:
        return self._call(_Calls.similar(item_id, k, user_id), timeout_s, request_id)

    def ready(self, timeout_s: float = 2.0) -> bool:
        try:
            return self.http.get("/readyz", timeout=timeout_s).status_code == 200
        except Exception:
            return False

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> FeedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncFeedClient(_FeedBase):
    """asyncio client over one pooled ``httpx.AsyncClient`` (made on first use)."""

    def __init__(self, base_url: str, timeout_s: float = 2.0, retry: RetryPolicy | None = None, max_connections: int = 32) -> None:
        super().__init__(base_url, timeout_s, retry, max_connections)
        self._http: Any = None

    @property
    def http(self) -> Any:
        if self._http is None:
            import httpx

            self._http = httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout_s, limits=_limits(self.max_connections))
        return self._http

    async def _call(self, route: _Route, timeout_s: float | None, rid: str | None) -> Any:
        import httpx

        rid = rid or uuid.uuid4().hex
        kw = self._request(route, rid)
        async for attempt in self.retry.asyncio():
            with attempt:
                try:
                    r = await self.http.request(route.method, route.path, timeout=self._timeout(timeout_s, attempt, rid), **kw)
                except httpx.TransportError as e:
                    raise _transport(e, rid) from e
                return route.read(r, rid)
        raise AssertionError("unreachable")

    async def feed(
        self,
        user_id: str,
        count: int | None = None,
        cursor: str | None = None,
        *,
        scene: str | None = None,
        device: str | None = None,
        geo: str | None = None,
        ab_bucket: str | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> FeedPage:
        route = _Calls.feed(user_id, count, cursor, scene=scene, device=device, geo=geo, ab_bucket=ab_bucket)
        return await self._call(route, timeout_s, request_id)

    async def events(
        self,
        user_id: str,
        events: list[Event | dict[str, Any]],
        idempotency_key: str | None = None,
        *,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> EventsResult:
        return await self._call(_Calls.events(user_id, events, idempotency_key), timeout_s, request_id)

    async def item(self, item_id: int, *, timeout_s: float | None = None, request_id: str | None = None) -> Item:
        return await self._call(_Calls.item(item_id), timeout_s, request_id)

    async def similar(
        self, item_id: int, k: int = 10, user_id: str | None = None, *, timeout_s: float | None = None, request_id: str | None = None
    ) -> SimilarItems:
        return await self._call(_Calls.similar(item_id, k, user_id), timeout_s, request_id)

    async def ready(self, timeout_s: float = 2.0) -> bool:
        try:
            return (await self.http.get("/readyz", timeout=timeout_s)).status_code == 200
        except Exception:
            return False

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def __aenter__(self) -> AsyncFeedClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
