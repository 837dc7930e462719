"""Validation of a recommend request's inputs, with the documented caps.

Every check raises a typed ``genrec.errors`` error naming the field, so adapters can return a
precise 4xx / KServe error. Caps come from ``PipelineConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from genrec.data.schema import N_ACTIONS, History
from genrec.errors import HistoryTooLongError, InvalidValueError, UnknownItemError
from genrec.settings import PipelineConfig

MAX_TIMESTAMP = 4_102_444_800  # 2100-01-01: later (or negative) times are a unit mistake


@dataclass(frozen=True)
class RequestOptions:
    beam_widths: tuple[int, int, int]
    ann_candidates: int
    max_candidates: int
    prerank_keep: int
    final_k: int


def _int_array(name: str, values: object) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise InvalidValueError(name, f"expected a 1-D array, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise InvalidValueError(name, "contains NaN or infinity")
        if np.any(arr != np.round(arr)):
            raise InvalidValueError(name, "expected integers")
    elif arr.size and arr.dtype.kind not in "iu":
        raise InvalidValueError(name, f"expected integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def validate_history(
    item: object, action: object, timestamp: object, device: object, n_items: int, n_devices: int, cfg: PipelineConfig
) -> History:
    items = _int_array("history_items", item)
    n = items.size
    if n > cfg.max_history_events:
        raise HistoryTooLongError(n, cfg.max_history_events)
    actions, times, devices = (
        _int_array(name, v) for name, v in (("history_actions", action), ("history_timestamps", timestamp), ("history_devices", device))
    )
    for name, arr in (("history_actions", actions), ("history_timestamps", times), ("history_devices", devices)):
        if arr.size != n:
            raise InvalidValueError(name, f"has {arr.size} values but history_items has {n}")
    bad = np.flatnonzero((items < 0) | (items >= n_items))
    if bad.size:
        raise UnknownItemError(items[bad].tolist(), n_items)
    if n and (actions.min() < 0 or actions.max() >= N_ACTIONS):
        raise InvalidValueError("history_actions", f"action codes must lie in [0, {N_ACTIONS})")
    if n and (devices.min() < 0 or devices.max() >= n_devices):
        raise InvalidValueError("history_devices", f"device codes must lie in [0, {n_devices})")
    if n and (times.min() < 0 or times.max() > MAX_TIMESTAMP):
        raise InvalidValueError("history_timestamps", f"expected unix seconds in [0, {MAX_TIMESTAMP}]")
    if n > 1 and np.any(np.diff(times) < 0):
        raise InvalidValueError("history_timestamps", "events must be ordered oldest first")
    return History(items, actions, times, devices)


def validate_excluded(excluded: object, n_items: int, cfg: PipelineConfig) -> np.ndarray:
    ex = _int_array("excluded_items", excluded if excluded is not None else [])
    if ex.size > cfg.max_excluded_items:
        raise InvalidValueError("excluded_items", f"{ex.size} items, over the cap of {cfg.max_excluded_items}")
    bad = np.flatnonzero((ex < 0) | (ex >= n_items))
    if bad.size:
        raise UnknownItemError(ex[bad].tolist(), n_items)
    return ex


def validate_options(
    cfg: PipelineConfig, beam_widths: object = None, ann_candidates: object = None, final_k: object = None
) -> RequestOptions:
    widths = cfg.beam_widths if beam_widths is None else tuple(int(w) for w in np.atleast_1d(np.asarray(beam_widths)))
    if len(widths) == 1:
        widths = (min(widths[0], cfg.beam_widths[0]), min(widths[0], cfg.beam_widths[1]), widths[0])
    if len(widths) != 3 or any(w < 1 or w > cfg.max_beam_width for w in widths):
        raise InvalidValueError("beam_width", f"expected 1 or 3 values in [1, {cfg.max_beam_width}], got {list(widths)}")
    ann = cfg.ann_candidates if ann_candidates is None else int(ann_candidates)
    if ann < 0 or ann > cfg.max_candidates:
        raise InvalidValueError("ann_candidates", f"expected [0, {cfg.max_candidates}], got {ann}")
    k = cfg.final_k if final_k is None else int(final_k)
    if k < 1 or k > cfg.prerank_keep:
        raise InvalidValueError("top_k", f"expected [1, {cfg.prerank_keep}], got {k}")
    return RequestOptions(tuple(widths), ann, cfg.max_candidates, cfg.prerank_keep, k)  # type: ignore[arg-type]
