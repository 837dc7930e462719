"""Event validation and the batch plan; the envelope and its status table; history records."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from genrec.feed.envelope import ErrorKind, FeedError, error_body, kind_for_status, ok_body
from genrec.feed.events import Event, body_hash, plan_batch
from genrec.feed.history import CLICK, LIKE, VIEW, pack, unpack
from genrec.feed.tokens import EventTokens

NOW = 1_700_000_000.0
TOKENS = EventTokens("k", 3600)


def ev(type_: str, item: int = 3, **kw) -> Event:
    return Event(type=type_, item_id=item, event_token=TOKENS.issue("u", item, "t", NOW), timestamp=NOW - 5, **kw)


def test_plan_maps_types_to_history_and_relations():
    events = [ev("impression"), ev("click"), ev("like", 4), ev("hide", 5), ev("dislike", 6), ev("purchase"), ev("dwell", dwell_ms=1500)]
    plan = plan_batch("u", events, 10, TOKENS, NOW, 100)
    assert plan.accepted == 7
    assert len(plan.impressions) == 1
    assert plan.likes == [4] and plan.negatives == [5, 6]
    h = unpack(plan.history, 10, 3)
    assert h.items.tolist() == [3, 4, 3, 3]
    assert h.actions.tolist() == [CLICK, LIKE, 3, VIEW]
    assert plan.answer()["history_appended"] == 4


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "share", "item_id": 1, "event_token": "x", "timestamp": 1.0},
        {"type": "click", "item_id": -1, "event_token": "x", "timestamp": 1.0},
        {"type": "click", "item_id": "one", "event_token": "x", "timestamp": 1.0},
        {"type": "click", "item_id": 1, "event_token": "", "timestamp": 1.0},
        {"type": "click", "item_id": 1, "event_token": "x" * 513, "timestamp": 1.0},
        {"type": "click", "item_id": 1, "event_token": "x", "timestamp": float("nan")},
        {"type": "click", "item_id": 1, "event_token": "x", "timestamp": 1.0, "extra": 1},
        {"type": "dwell", "item_id": 1, "event_token": "x", "timestamp": 1.0},
        {"type": "click", "item_id": 1, "event_token": "x", "timestamp": 1.0, "device": "toaster"},
        {"item_id": 1, "event_token": "x", "timestamp": 1.0},
    ],
)
def test_schema_refuses(bad):
    with pytest.raises(ValidationError):
        TypeAdapter(Event).validate_python(bad)


def test_unknown_item_bad_token_future_time_and_batch_size():
    with pytest.raises(FeedError) as e:
        plan_batch("u", [ev("click", 12)], 10, TOKENS, NOW, 100)
    assert e.value.kind is ErrorKind.UNKNOWN_ITEM and e.value.status == 422
    other_user = Event(type="click", item_id=3, event_token=TOKENS.issue("v", 3, "t", NOW), timestamp=NOW)
    with pytest.raises(FeedError) as e:
        plan_batch("u", [other_user], 10, TOKENS, NOW, 100)
    assert e.value.kind is ErrorKind.INVALID_EVENT_TOKEN and e.value.status == 400
    future = Event(type="click", item_id=3, event_token=TOKENS.issue("u", 3, "t", NOW), timestamp=NOW + 3600)
    with pytest.raises(FeedError, match="future"):
        plan_batch("u", [future], 10, TOKENS, NOW, 100)
    with pytest.raises(FeedError, match="at most 2"):
        plan_batch("u", [ev("click")] * 3, 10, TOKENS, NOW, 2)
    with pytest.raises(FeedError, match="at least one"):
        plan_batch("u", [], 10, TOKENS, NOW, 2)


def test_body_hash_is_canonical():
    a = [ev("click")]
    assert body_hash("u", a) == body_hash("u", [Event.model_validate(a[0].model_dump())])
    assert body_hash("u", a) != body_hash("v", a)
    assert body_hash("u", a) != body_hash("u", [ev("like")])


def test_envelope_and_status_table():
    assert ok_body({"x": 1}, "r") == {"code": 0, "data": {"x": 1}, "msg": "", "request_id": "r"}
    body = error_body(ErrorKind.IDEMPOTENCY_CONFLICT, "m", "r")
    assert body["code"] != 0 and body["msg"] == "m" and body["request_id"] == "r"
    statuses = {k.status for k in ErrorKind}
    assert {400, 404, 409, 413, 422, 429, 503, 504} <= statuses
    assert len({k.code for k in ErrorKind}) == len(ErrorKind)
    for status in (400, 404, 409, 413, 415, 422, 429, 503, 504):
        assert kind_for_status(status).status == status
    assert kind_for_status(418).status == 400 and kind_for_status(502).status == 500


def test_history_records_roundtrip_and_clean_up():
    recs = pack(np.array([1, 2, 99, 3]), np.array([10.0, 5.0, 6.0, 20.0]), np.array([0, 1, 2, 3]), np.array([0, 2, 1, 7]))
    h = unpack(recs + [b"short"], 10, 3)
    assert h.items.tolist() == [1, 2, 3]  # the unknown item 99 and the broken record are dropped
    assert h.times.tolist() == [10.0, 10.0, 20.0]  # made non-decreasing
    assert h.devices.tolist() == [0, 2, 2]  # clipped to the known devices
    assert len(unpack([], 10, 3)) == 0
