"""What the feed sends to ``recommend``: whole-second timestamps, whatever the events API stored."""

from __future__ import annotations

import numpy as np

from genrec.feed.history import History
from genrec.feed.recommender import _recommend_inputs


def test_fractional_event_times_reach_recommend_as_whole_seconds():
    # /v1/events accepts any float timestamp; recommend refuses non-integers ("expected integers"),
    # which had turned every later feed of such a user into the fallback
    h = History(np.array([3, 4]), np.array([1, 1]), np.array([1000.25, 1000.999]), np.array([0, 0]))
    inputs = {i.name(): i for i in _recommend_inputs("u1", h, 0, 0, [])}
    sent = np.frombuffer(inputs["history_timestamps"]._get_content(), dtype=np.float64)
    assert sent.tolist() == [1000.0, 1000.0]
