"""The HTTP edge around BentoML: one pure ASGI middleware and the item routes.

The middleware gives every request an id (``X-Request-ID`` or a new one; echoed in the
response header and in every log line), refuses bodies over the cap (413), non-JSON bodies on
the JSON routes (415, 400), wraps every error answered by someone else (BentoML's validation,
Starlette's 404/405, an unexpected exception) into the envelope, and records the bounded
per-route metrics and one JSON access-log line.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from genrec.feed import metrics
from genrec.feed.envelope import ErrorKind, FeedError, error_body, kind_for_status, ok_body
from genrec.feed.logs import log_event, request_id_var

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_ROUTES = ("/v1/feed", "/v1/events")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
log = logging.getLogger("genrec.feed")


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", []):
        if k.lower() == name:
            return bytes(v).decode("latin-1")
    return None


class _Refused(Exception):
    def __init__(self, kind: ErrorKind, msg: str) -> None:
        self.kind, self.msg = kind, msg


class FeedMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int = 65_536, validators: dict[str, Callable[[Any], Any]] | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.validators = validators or {}  # route -> a pydantic validation that names each bad field

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        rid = given if given and _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        token = request_id_var.set(rid)
        route, method = metrics.route_template(scope["path"]), scope["method"]
        t0 = time.perf_counter()
        state: dict[str, Any] = {"status": 500, "started": False}
        try:
            try:
                receive = await self._checked_body(scope, receive, route)
            except _Refused as r:
                await self._send_json(send, r.kind.status, error_body(r.kind, r.msg, rid), rid, state)
                return
            try:
                await self.app(scope, receive, self._wrap_send(send, rid, route, state))
            except Exception as e:  # never a bare 500 page: an enveloped one, logged
                log_event(log, logging.ERROR, "unhandled error", error=repr(e)[:500])
                if not state["started"]:
                    await self._send_json(send, 500, error_body(ErrorKind.INTERNAL, "internal error", rid), rid, state)
        finally:
            seconds = time.perf_counter() - t0
            metrics.REQUESTS.labels(
                route=route, method=method if method in ("GET", "POST", "HEAD", "PUT", "DELETE") else "other", status=str(state["status"])
            ).inc()
            metrics.LATENCY.labels(route=route).observe(seconds)
            if route not in ("/livez", "/readyz", "/metrics"):
                log_event(log, logging.INFO, "request", method=method, route=route, status=state["status"], ms=round(seconds * 1000, 2))
            request_id_var.reset(token)

    async def _checked_body(self, scope: Scope, receive: Receive, route: str) -> Receive:
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return receive
        length = _header(scope, b"content-length")
        if length and length.isdigit() and int(length) > self.max_body_bytes:
            raise _Refused(ErrorKind.PAYLOAD_TOO_LARGE, f"body is larger than {self.max_body_bytes} bytes")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _Refused(ErrorKind.PAYLOAD_TOO_LARGE, f"body is larger than {self.max_body_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if route in JSON_ROUTES:
            ctype = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
            if ctype != "application/json":
                raise _Refused(ErrorKind.UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json")
            try:
                parsed = json.loads(body)
            except (ValueError, UnicodeDecodeError) as e:
                raise _Refused(ErrorKind.BAD_REQUEST, f"malformed JSON: {e}") from e
            if not isinstance(parsed, dict):
                raise _Refused(ErrorKind.VALIDATION, "the body must be a JSON object")
            if route in self.validators:
                try:
                    self.validators[route](parsed)
                except ValidationError as e:
                    raise _Refused(ErrorKind.VALIDATION, _describe(e)) from e
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay

    def _wrap_send(self, send: Send, rid: str, route: str, state: dict[str, Any]) -> Send:
        held: dict[str, Any] = {}

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = int(message["status"])
                state["status"] = status
                if status >= 400:
                    held["start"], held["body"] = message, []
                    return
                state["started"] = True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
                await send(message)
            elif message["type"] == "http.response.body" and "start" in held:
                held["body"].append(message.get("body", b""))
                if not message.get("more_body", False):
                    await self._send_error(send, held["start"], b"".join(held["body"]), rid, route, state)
            else:
                await send(message)

        return wrapped

    async def _send_error(self, send: Send, start: Message, body: bytes, rid: str, route: str, state: dict[str, Any]) -> None:
        status = int(start["status"])
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and {"code", "data", "msg", "request_id"} <= parsed.keys():
            state["started"] = True
            start["headers"] = [*start.get("headers", []), (b"x-request-id", rid.encode())]
            await send(start)
            await send({"type": "http.response.body", "body": body})
            return
        if isinstance(parsed, dict):
            msg = str(parsed.get("error") or parsed.get("detail") or parsed)
        else:
            msg = body.decode("utf-8", "replace").strip() or "error"
        kind = kind_for_status(status)
        if route in JSON_ROUTES and status == 400:  # BentoML's own input validation
            kind = ErrorKind.VALIDATION
        await self._send_json(send, kind.status, error_body(kind, msg[:2000], rid), rid, state)

    @staticmethod
    async def _send_json(send: Send, status: int, body: dict[str, Any], rid: str, state: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        state["status"], state["started"] = status, True
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()), (b"x-request-id", rid.encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": raw})


def _describe(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        where = ".".join(str(x) for x in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def items_app(handlers: Callable[[], Any]) -> Starlette:
    """``GET /v1/items/{id}`` and ``GET /v1/items/{id}/similar?k=&user_id=`` (mounted at /v1/items)."""

    def rid() -> str:
        return request_id_var.get()

    def fail(e: FeedError) -> JSONResponse:
        return JSONResponse(error_body(e.kind, e.msg, rid()), status_code=e.status)

    def item_id(request: Request) -> int:
        raw = request.path_params["item_id"]
        if not raw.isdigit() or len(raw) > 12:
            raise FeedError(ErrorKind.NOT_FOUND, f"item {raw[:40]!r} is not in the catalogue")
        return int(raw)

    async def item(request: Request) -> JSONResponse:
        try:
            return JSONResponse(ok_body(handlers().item(item_id(request)), rid()))
        except FeedError as e:
            return fail(e)

    async def similar(request: Request) -> JSONResponse:
        try:
            raw_k = request.query_params.get("k", "10")
            if not raw_k.isdigit() or not 1 <= int(raw_k) <= 50:
                raise FeedError(ErrorKind.VALIDATION, "k: an integer in 1..50")
            user = request.query_params.get("user_id")
            if user is not None and not re.fullmatch(r"[A-Za-z0-9_.:@-]{1,128}", user):
                raise FeedError(ErrorKind.VALIDATION, "user_id: 1-128 characters of A-Z a-z 0-9 _ . : @ -")
            return JSONResponse(ok_body(await handlers().similar(item_id(request), int(raw_k), user), rid()))
        except FeedError as e:
            return fail(e)

    return Starlette(routes=[Route("/{item_id}", item, methods=["GET"]), Route("/{item_id}/similar", similar, methods=["GET"])])
