"""A user's event history as stored in Redis: one fixed-size binary record per event
(item int64, unix time float64, action int8, device int8 = 18 bytes), oldest first."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RECORD = np.dtype([("item", "<i8"), ("time", "<f8"), ("action", "i1"), ("device", "i1")])
VIEW, CLICK, LIKE, PURCHASE = 0, 1, 2, 3  # genrec.data.schema.Action


@dataclass(frozen=True)
class History:
    items: np.ndarray  # int64
    actions: np.ndarray  # int64
    times: np.ndarray  # float64, non-decreasing
    devices: np.ndarray  # int64

    def __len__(self) -> int:
        return int(self.items.shape[0])

    @classmethod
    def empty(cls) -> History:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64), np.zeros(0, np.int64))


def pack(items: np.ndarray, times: np.ndarray, actions: np.ndarray, devices: np.ndarray) -> list[bytes]:
    rec = np.empty(len(items), RECORD)
    rec["item"], rec["time"], rec["action"], rec["device"] = items, times, actions, devices
    raw = rec.tobytes()
    n = RECORD.itemsize
    return [raw[i : i + n] for i in range(0, len(raw), n)]


def unpack(records: list[bytes], n_items: int, n_devices: int) -> History:
    """Records -> arrays. Records naming an item outside the catalogue (a newer catalogue) are
    dropped; times are made non-decreasing (an event may arrive with an older clock)."""
    good = [r for r in records if len(r) == RECORD.itemsize]
    if not good:
        return History.empty()
    rec = np.frombuffer(b"".join(good), RECORD)
    keep = (rec["item"] >= 0) & (rec["item"] < n_items) & np.isfinite(rec["time"])
    rec = rec[keep]
    return History(
        rec["item"].astype(np.int64),
        np.clip(rec["action"], VIEW, PURCHASE).astype(np.int64),
        np.maximum.accumulate(rec["time"]) if len(rec) else rec["time"].astype(np.float64),
        np.clip(rec["device"], 0, max(n_devices - 1, 0)).astype(np.int64),
    )
