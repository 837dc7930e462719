"""Validation of a recommend request's inputs, with the documented caps.

Every check raises a typed ``genrec.errors`` error naming the field, so adapters can return a
precise 4xx / KServe error. Caps come from ``PipelineConfig``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from genrec.data.schema import N_ACTIONS, History
from genrec.ensemble.request_types import RecommendRequest, RequestOptions
from genrec.errors import HistoryTooLongError, InvalidValueError, UnknownItemError
from genrec.settings import PipelineConfig


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
    if n and (times.min() < 0 or times.max() > cfg.max_timestamp):
        raise InvalidValueError("history_timestamps", f"expected unix seconds in [0, {cfg.max_timestamp}]")
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


def _option_ints(name: str, value: object) -> tuple[int, ...]:
    """An option given as an int, a list of ints or a comma-separated string (request parameters)."""
    parts = value.split(",") if isinstance(value, str) else list(np.atleast_1d(np.asarray(value)))
    try:
        out = tuple(int(str(p).strip()) for p in parts)
    except ValueError:
        raise InvalidValueError(name, f"expected integers, got {value!r}") from None
    if not out:
        raise InvalidValueError(name, "is empty")
    return out


def validate_options(
    cfg: PipelineConfig,
    beam_widths: object = None,
    ann_candidates: object = None,
    max_candidates: object = None,
    final_k: object = None,
) -> RequestOptions:
    """Per-request knobs; each defaults to the config and is capped (caps in ``PipelineConfig``)."""
    widths = cfg.beam_widths if beam_widths is None else _option_ints("beam_width", beam_widths)
    if len(widths) == 1:  # one width: the last level's, earlier levels keep their default unless narrower
        widths = (min(widths[0], cfg.beam_widths[0]), min(widths[0], cfg.beam_widths[1]), widths[0])
    if len(widths) != 3 or any(w < 1 or w > cfg.max_beam_width for w in widths):
        raise InvalidValueError("beam_width", f"expected 1 or 3 values in [1, {cfg.max_beam_width}], got {list(widths)}")
    cands = cfg.max_candidates if max_candidates is None else _option_ints("max_candidates", max_candidates)[0]
    if not cfg.prerank_keep <= cands <= cfg.max_candidates:
        raise InvalidValueError("max_candidates", f"expected [{cfg.prerank_keep}, {cfg.max_candidates}], got {cands}")
    ann = cfg.ann_candidates if ann_candidates is None else _option_ints("ann_candidates", ann_candidates)[0]
    if not 0 <= ann <= cands:
        raise InvalidValueError("ann_candidates", f"expected [0, {cands}], got {ann}")
    k = cfg.final_k if final_k is None else _option_ints("top_k", final_k)[0]
    if not 1 <= k <= cfg.prerank_keep:
        raise InvalidValueError("top_k", f"expected [1, {cfg.prerank_keep}], got {k}")
    return RequestOptions((widths[0], widths[1], widths[2]), ann, cands, cfg.prerank_keep, k, cfg.follow_candidates, cfg.follow_keep)


def validate_request(
    item: object,
    action: object,
    timestamp: object,
    device: object,
    *,
    n_items: int,
    n_devices: int,
    n_segments: int,
    cfg: PipelineConfig,
    segment: object = 0,
    ctx_device: object = 0,
    ctx_time: object = None,
    user_id: str | bytes | None = None,
    excluded: object = None,
    beam_widths: object = None,
    ann_candidates: object = None,
    max_candidates: object = None,
    final_k: object = None,
) -> RecommendRequest:
    """Every input of a recommend request checked against the catalogue and the caps."""
    h = validate_history(item, action, timestamp, device, n_items, n_devices, cfg)
    seg, dev = (int(_int_array(n, np.atleast_1d(np.asarray(v)))[0]) for n, v in (("segment", segment), ("ctx_device", ctx_device)))
    if not 0 <= seg < n_segments:
        raise InvalidValueError("segment", f"expected [0, {n_segments}), got {seg}")
    if not 0 <= dev < n_devices:
        raise InvalidValueError("ctx_device", f"expected [0, {n_devices}), got {dev}")
    t = None
    if ctx_time is not None:
        t = int(_int_array("request_time", np.atleast_1d(np.asarray(ctx_time, dtype=np.float64)))[0])
        if not 0 <= t <= cfg.max_timestamp:
            raise InvalidValueError("request_time", f"expected unix seconds in [0, {cfg.max_timestamp}]")
    return RecommendRequest(
        h,
        validate_options(cfg, beam_widths, ann_candidates, max_candidates, final_k),
        seg,
        dev,
        ctx_time=t,
        user_id=validate_user_id(user_id, cfg.max_user_id_bytes),
        excluded=validate_excluded(excluded, n_items, cfg),
    )


class CatalogueLimits(Protocol):
    """What validation needs of a catalogue (``genrec.ensemble.catalogue.Catalogue`` has it)."""

    @property
    def n_items(self) -> int: ...

    n_devices: int
    n_segments: int


def validate_for_catalogue(
    catalogue: CatalogueLimits, cfg: PipelineConfig, item: object, action: object, timestamp: object, device: object, **kw: Any
) -> RecommendRequest:
    """``validate_request`` against a catalogue's sizes: the one entry point of the serving path
    and the PyTorch reference."""
    c = catalogue
    return validate_request(
        item, action, timestamp, device, n_items=c.n_items, n_devices=c.n_devices, n_segments=c.n_segments, cfg=cfg, **kw
    )


def validate_user_id(user_id: str | bytes | None, max_bytes: int) -> str | None:
    """The cache key as sent: checked in bytes (1..max_bytes), and refused unless it is
    valid UTF-8, so two different byte strings never map to one key."""
    if user_id is None:
        return None
    raw = user_id if isinstance(user_id, bytes) else str(user_id).encode("utf-8", errors="surrogatepass")
    if not 1 <= len(raw) <= max_bytes:
        raise InvalidValueError("user_id", f"expected 1 to {max_bytes} bytes, got {len(raw)}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidValueError("user_id", "is not valid UTF-8") from None


# KServe request parameter -> validate_options argument (documented in the recommend config)
KSERVE_PARAMETERS = {
    "beam_width": "beam_widths",
    "ann_candidates": "ann_candidates",
    "max_candidates": "max_candidates",
    "top_k": "final_k",
}
HISTORY_INPUTS = ("history_items", "history_actions", "history_timestamps", "history_devices")


def parse_parameters(raw: str | None) -> dict[str, object]:
    """A KServe request's ``parameters`` (JSON text from Triton) as a dict, or a typed error."""
    try:
        params = json.loads(raw or "{}")
    except json.JSONDecodeError as e:
        raise InvalidValueError("parameters", f"not valid JSON ({e.msg})") from None
    if not isinstance(params, dict):
        raise InvalidValueError("parameters", "expected a JSON object")
    return params


def kserve_request_args(inputs: Mapping[str, np.ndarray | None], params: Mapping[str, object]) -> tuple[tuple, dict]:
    """``validate_request``'s arguments from a ``recommend`` request: its tensors (None where an
    optional input is absent) and its parameters (``excluded_items`` may come in both)."""
    excluded = inputs.get("excluded_items")
    if "excluded_items" in params and str(params["excluded_items"]).strip():
        extra = np.asarray(_option_ints("excluded_items", params["excluded_items"]), np.int64)
        excluded = extra if excluded is None else np.concatenate([np.asarray(excluded, np.int64), extra])
    given_user = inputs.get("user_id")
    user: bytes | str | None = None
    if given_user is not None:
        values = np.asarray(given_user).reshape(-1)
        if values.size != 1:
            raise InvalidValueError("user_id", f"expected one value, got {values.size}")
        user = values[0] if isinstance(values[0], bytes) else str(values[0])
    kwargs = {
        "segment": 0 if inputs.get("segment") is None else inputs["segment"],
        "ctx_device": 0 if inputs.get("ctx_device") is None else inputs["ctx_device"],
        "ctx_time": inputs.get("request_time"),
        "user_id": user,
        "excluded": excluded,
        **{KSERVE_PARAMETERS[k]: v for k, v in params.items() if k in KSERVE_PARAMETERS},
    }
    return tuple(inputs.get(n) for n in HISTORY_INPUTS), kwargs
