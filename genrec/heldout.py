"""Requests for held-out targets (leave-last-out), shared by training (validation targets) and
evaluation (test targets)."""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import numpy as np

from genrec.data.schema import Dataset, History
from genrec.data.split import Split
from genrec.ensemble.request_types import RecommendRequest
from genrec.ensemble.request_validation import validate_options
from genrec.settings import PipelineConfig


def history_slice(ds: Dataset, start: int, end: int) -> History:
    ev = ds.events
    sl = slice(start, end)
    return History(
        ev.item[sl].astype(np.int64), ev.action[sl].astype(np.int64), ev.timestamp[sl].astype(np.int64), ev.device[sl].astype(np.int64)
    )


def heldout_requests(
    ds: Dataset,
    split: Split,
    users: np.ndarray,
    cfg: PipelineConfig,
    target: Literal["test", "validation"] = "test",
    exclude_seen: bool = False,
) -> tuple[list[RecommendRequest], np.ndarray]:
    """For each user: the history before the target (the latest ``cfg.max_history_events``), at
    the target's device and time, with the config's default options, and the target item.

    ``exclude_seen``: the request's ``excluded`` holds every item of the user's events before the
    target (the whole history, not only the capped window), the mechanism serving uses
    (``excluded_items``: masked in the beam, removed from ANN, never returned)."""
    max_events, options = cfg.max_history_events, validate_options(cfg)
    reqs, targets = [], []
    for u in users:
        end, t = (split.test_target if target == "test" else split.validation_target)(ds.events, int(u))
        first = int(split.offsets[u])
        start = max(first, end - max_events)
        req = RecommendRequest(
            history_slice(ds, start, end), options, int(ds.users.segment[u]), int(ds.events.device[t]), int(ds.events.timestamp[t])
        )
        if exclude_seen:
            req = replace(req, excluded=np.unique(ds.events.item[first:end]).astype(np.int64))
        reqs.append(req)
        targets.append(int(ds.events.item[t]))
    return reqs, np.array(targets)
