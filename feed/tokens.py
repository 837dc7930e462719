"""Event tokens: each served item carries one, signed by the service, and ``/v1/events`` only
accepts an event whose token names the same user and item and is not older than its TTL.

An ad's token also carries what the auction decided at serve time (campaign, GSP price per
click, experiment bucket): a click is charged that signed price, so the price a click costs is
fixed when the ad is shown and cannot be changed by the caller."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from genrec.feed.signing import SignatureError, Signer, compact_json


class EventTokenError(ValueError):
    pass


@dataclass(frozen=True)
class AdClaim:
    campaign: int
    price: float  # GSP price per click, currency units
    bucket: int  # the experiment bucket the ad was served under


@dataclass(frozen=True)
class EventToken:
    user_id: str
    item_id: int
    trace_id: str
    issued_at: int
    ad: AdClaim | None = None
    digest: str = ""  # a short hash of the whole token: the idempotency id of an ad click's charge


class EventTokens:
    def __init__(self, key: str, ttl_s: int) -> None:
        self._signer = Signer(key, "event")
        self.ttl_s = ttl_s

    def issue(self, user_id: str, item_id: int, trace_id: str, now: float, ad: AdClaim | None = None) -> str:
        payload: dict[str, object] = {"u": user_id, "i": int(item_id), "t": trace_id, "at": int(now)}
        if ad is not None:
            payload["ad"] = {"c": int(ad.campaign), "p": round(float(ad.price), 6), "b": int(ad.bucket)}
        return self._signer.sign(compact_json(payload))

    def verify(self, token: str, user_id: str, item_id: int, now: float) -> EventToken:
        try:
            d = json.loads(self._signer.verify(token))
            ad = d.get("ad")
            claim = None if ad is None else AdClaim(int(ad["c"]), float(ad["p"]), int(ad["b"]))
            tok = EventToken(str(d["u"]), int(d["i"]), str(d["t"]), int(d["at"]), claim, hashlib.sha256(token.encode()).hexdigest()[:24])
        except (SignatureError, ValueError, KeyError, TypeError) as e:
            raise EventTokenError(f"event_token is not a token this service signed ({e})") from e
        if tok.user_id != user_id or tok.item_id != item_id:
            raise EventTokenError("event_token was issued for another user or item")
        if now - tok.issued_at > self.ttl_s:
            raise EventTokenError("event_token has expired")
        return tok
