"""The response envelope ``{"code", "data", "msg", "request_id"}`` and the error table.

``code`` is 0 on success; an error has a stable numeric code, a readable ``msg`` and the HTTP
status of its kind. Every response of the service, the errors BentoML raises itself included,
goes through :func:`error_body` or :func:`ok_body`.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any


class ErrorKind(Enum):
    """(code, HTTP status) of each error the service answers with."""

    BAD_REQUEST = (40000, 400)  # malformed JSON, missing header value, bad query
    INVALID_CURSOR = (40001, 400)  # tampered, expired, foreign or malformed cursor
    INVALID_EVENT_TOKEN = (40002, 400)
    NOT_FOUND = (40400, 404)  # unknown item, unknown route
    METHOD_NOT_ALLOWED = (40500, 405)
    IDEMPOTENCY_CONFLICT = (40900, 409)  # same Idempotency-Key, different body
    PAYLOAD_TOO_LARGE = (41300, 413)
    UNSUPPORTED_MEDIA_TYPE = (41500, 415)
    VALIDATION = (42200, 422)  # a field is missing, of the wrong type or out of range
    UNKNOWN_ITEM = (42201, 422)  # an event names an item the catalogue does not hold
    TOO_MANY_REQUESTS = (42900, 429)
    INTERNAL = (50000, 500)
    UNAVAILABLE = (50300, 503)  # Redis (events) or the service not ready
    TIMEOUT = (50400, 504)

    @property
    def code(self) -> int:
        return self.value[0]

    @property
    def status(self) -> int:
        return self.value[1]


_BY_STATUS = {
    400: ErrorKind.BAD_REQUEST,
    404: ErrorKind.NOT_FOUND,
    405: ErrorKind.METHOD_NOT_ALLOWED,
    409: ErrorKind.IDEMPOTENCY_CONFLICT,
    413: ErrorKind.PAYLOAD_TOO_LARGE,
    415: ErrorKind.UNSUPPORTED_MEDIA_TYPE,
    422: ErrorKind.VALIDATION,
    429: ErrorKind.TOO_MANY_REQUESTS,
    503: ErrorKind.UNAVAILABLE,
    504: ErrorKind.TIMEOUT,
}


def kind_for_status(status: int) -> ErrorKind:
    """The kind of an error answered by someone else (BentoML, Starlette) with this status."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ErrorKind.INTERNAL if status >= 500 else ErrorKind.BAD_REQUEST


class FeedError(Exception):
    """An error with its kind; the service turns it into an enveloped response."""

    def __init__(self, kind: ErrorKind, msg: str) -> None:
        super().__init__(msg)
        self.kind = kind
        self.msg = msg

    @property
    def status(self) -> int:
        return self.kind.status


def ok_body(data: Any, request_id: str) -> dict[str, Any]:
    return {"code": 0, "data": data, "msg": "", "request_id": request_id}


def ok_json(data: dict[str, Any] | bytes, request_id: str) -> bytes:
    """The success envelope as JSON bytes. ``data`` given as bytes (a stored page) is placed
    as it is, so a replayed page is byte for byte the page first served."""
    raw = data if isinstance(data, bytes) else json.dumps(data, separators=(",", ":")).encode()
    return b'{"code":0,"data":' + raw + b',"msg":"","request_id":' + json.dumps(request_id).encode() + b"}"


def error_body(kind: ErrorKind, msg: str, request_id: str) -> dict[str, Any]:
    return {"code": kind.code, "data": None, "msg": msg, "request_id": request_id}
