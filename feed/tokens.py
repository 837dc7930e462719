"""Event tokens: each served item carries one, signed by the service, and ``/v1/events`` only
accepts an event whose token names the same user and item and is not older than its TTL."""

from __future__ import annotations

import json
from dataclasses import dataclass

from genrec.feed.signing import SignatureError, Signer, compact_json


class EventTokenError(ValueError):
    pass


@dataclass(frozen=True)
class EventToken:
    user_id: str
    item_id: int
    trace_id: str
    issued_at: int


class EventTokens:
    def __init__(self, key: str, ttl_s: int) -> None:
        self._signer = Signer(key, "event")
        self.ttl_s = ttl_s

    def issue(self, user_id: str, item_id: int, trace_id: str, now: float) -> str:
        return self._signer.sign(compact_json({"u": user_id, "i": int(item_id), "t": trace_id, "at": int(now)}))

    def verify(self, token: str, user_id: str, item_id: int, now: float) -> EventToken:
        try:
            d = json.loads(self._signer.verify(token))
            tok = EventToken(str(d["u"]), int(d["i"]), str(d["t"]), int(d["at"]))
        except (SignatureError, ValueError, KeyError, TypeError) as e:
            raise EventTokenError(f"event_token is not a token this service signed ({e})") from e
        if tok.user_id != user_id or tok.item_id != item_id:
            raise EventTokenError("event_token was issued for another user or item")
        if now - tok.issued_at > self.ttl_s:
            raise EventTokenError("event_token has expired")
        return tok
