"""``/v1/events``: the request models and the validation the schema alone cannot do (known
items, valid event tokens), and the plan of what one batch writes.

What each event type does:

| type | history (what ``recommend`` sees) | relations |
|---|---|---|
| impression | - (kept in a capped impression list) | - |
| dwell (``dwell_ms`` required) | view | - |
| click | click | - |
| like | like | added to likes, removed from negatives |
| purchase | purchase | - |
| dislike, hide | - | added to negatives (never served again), removed from likes |
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from genrec.feed.envelope import ErrorKind, FeedError
from genrec.feed.history import CLICK, LIKE, PURCHASE, VIEW, pack
from genrec.feed.tokens import AdClaim, EventTokenError, EventTokens

UserId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@-]+$")]
IdempotencyKey = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]
Device = Literal["mobile", "desktop", "tablet"]
DEVICES: dict[str, int] = {"mobile": 0, "desktop": 1, "tablet": 2}
EventType = Literal["impression", "click", "like", "dislike", "hide", "purchase", "dwell"]
HISTORY_ACTION = {"dwell": VIEW, "click": CLICK, "like": LIKE, "purchase": PURCHASE}
NEGATIVE = {"dislike", "hide"}
MAX_TIMESTAMP = 4_102_444_800.0  # 2100-01-01
MAX_CLOCK_SKEW_S = 300.0


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: EventType
    item_id: int = Field(ge=0, le=2**31 - 1)
    event_token: str = Field(min_length=1, max_length=512)
    timestamp: float = Field(ge=0, le=MAX_TIMESTAMP, allow_inf_nan=False, description="unix seconds")
    dwell_ms: int | None = Field(default=None, ge=0, le=86_400_000, description="required for dwell")
    device: Device | None = None

    @model_validator(mode="after")
    def _dwell_has_duration(self) -> Event:
        if self.type == "dwell" and self.dwell_ms is None:
            raise ValueError("a dwell event needs dwell_ms")
        return self


@dataclass(frozen=True)
class AdClick:
    """A click on a served ad: charged the price signed into its token, once per token."""

    claim: AdClaim
    token_digest: str
    issued_at: int  # when the ad was served: its UTC day holds the charge (and its idempotency set)


@dataclass
class BatchPlan:
    """What one events batch writes, in one atomic step (the user's slot), after its ad clicks
    were charged (each in its campaign's slot, idempotent by token)."""

    history: list[bytes] = field(default_factory=list)
    impressions: list[bytes] = field(default_factory=list)
    likes: list[int] = field(default_factory=list)
    negatives: list[int] = field(default_factory=list)
    ad_clicks: list[AdClick] = field(default_factory=list)
    accepted: int = 0
    ad_clicks_charged: int = 0  # set once the charges are done, before the batch is stored

    def answer(self) -> dict[str, int]:
        out = {
            "accepted": self.accepted,
            "history_appended": len(self.history),
            "impressions": len(self.impressions),
            "likes": len(self.likes),
            "negatives": len(self.negatives),
        }
        if self.ad_clicks:
            out["ad_clicks"] = len(self.ad_clicks)
            out["ad_clicks_charged"] = self.ad_clicks_charged
        return out


def body_hash(user_id: str, events: list[Event]) -> str:
    """The fingerprint an idempotency record keeps: the validated body, canonically encoded."""
    canon = json.dumps({"user_id": user_id, "events": [e.model_dump() for e in events]}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


def plan_batch(user_id: str, events: list[Event], n_items: int, tokens: EventTokens, now: float, max_events: int) -> BatchPlan:
    """Validate a batch against the catalogue and the tokens, and say what it writes.
    Raises FeedError (422 / 400) naming the first bad event."""
    if not events:
        raise FeedError(ErrorKind.VALIDATION, "events: at least one event is needed")
    if len(events) > max_events:
        raise FeedError(ErrorKind.VALIDATION, f"events: at most {max_events} events per batch")
    plan = BatchPlan()
    for i, e in enumerate(events):
        if not 0 <= e.item_id < n_items:
            raise FeedError(ErrorKind.UNKNOWN_ITEM, f"events[{i}].item_id: unknown item {e.item_id}")
        if not math.isfinite(e.timestamp) or e.timestamp > now + MAX_CLOCK_SKEW_S:
            raise FeedError(ErrorKind.VALIDATION, f"events[{i}].timestamp: in the future")
        try:
            token = tokens.verify(e.event_token, user_id, e.item_id, now)
        except EventTokenError as err:
            raise FeedError(ErrorKind.INVALID_EVENT_TOKEN, f"events[{i}].event_token: {err}") from err
        device = DEVICES[e.device] if e.device else 0
        record = pack(np.array([e.item_id]), np.array([e.timestamp]), np.array([HISTORY_ACTION.get(e.type, VIEW)]), np.array([device]))[0]
        if e.type == "impression":
            plan.impressions.append(record)
        elif e.type in NEGATIVE:
            plan.negatives.append(e.item_id)
        else:
            plan.history.append(record)
            if e.type == "like":
                plan.likes.append(e.item_id)
            if e.type == "click" and token.ad is not None and all(c.token_digest != token.digest for c in plan.ad_clicks):
                plan.ad_clicks.append(AdClick(token.ad, token.digest, token.issued_at))
        plan.accepted += 1
    return plan
