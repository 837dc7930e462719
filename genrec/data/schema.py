"""The catalogue and the event log, as columnar numpy arrays.

Item ids are dense ints ``0..n_items-1``; user ids are dense ints ``0..n_users-1``. Loaders map
external ids to these and keep the mapping.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from enum import IntEnum

import numpy as np


class Action(IntEnum):
    VIEW = 0
    CLICK = 1
    LIKE = 2
    PURCHASE = 3


class ItemKind(IntEnum):
    CONTENT = 0
    AD = 1
    PRODUCT = 2


N_ACTIONS = len(Action)
N_KINDS = len(ItemKind)


@dataclass(frozen=True)
class ItemMetadata:
    category: np.ndarray  # (n,) int32
    author: np.ndarray  # (n,) int32
    text_tokens: np.ndarray  # (n, T) int32, text-like features (bag of tokens)
    kind: np.ndarray  # (n,) int8, ItemKind
    # Ads (-1 / NaN where kind != AD)
    advertiser: np.ndarray  # (n,) int32
    campaign: np.ndarray  # (n,) int32
    bid_cpc: np.ndarray  # (n,) float32, currency units per click
    daily_budget: np.ndarray  # (n,) float32
    frequency_cap: np.ndarray  # (n,) int32, impressions per user per day
    target_categories: np.ndarray  # (n, 3) int32, -1 padded: categories an ad targets
    # Products (NaN where kind != PRODUCT)
    price: np.ndarray  # (n,) float32
    n_categories: int
    n_authors: int
    n_text_tokens: int

    @property
    def n_items(self) -> int:
        return int(self.category.shape[0])


@dataclass(frozen=True)
class Events:
    """Events sorted by (user, timestamp)."""

    user: np.ndarray  # (E,) int32
    item: np.ndarray  # (E,) int32
    action: np.ndarray  # (E,) int8
    timestamp: np.ndarray  # (E,) int64, seconds
    device: np.ndarray  # (E,) int8, context
    n_users: int

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def user_offsets(self) -> np.ndarray:
        """``offsets[u]:offsets[u+1]`` are user u's events."""
        counts = np.bincount(self.user, minlength=self.n_users)
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def subset(self, mask: np.ndarray) -> Events:
        return Events(self.user[mask], self.item[mask], self.action[mask], self.timestamp[mask], self.device[mask], self.n_users)


@dataclass(frozen=True)
class Users:
    segment: np.ndarray  # (U,) int32, the user token's feature
    main_device: np.ndarray  # (U,) int8
    n_segments: int


@dataclass(frozen=True)
class Dataset:
    name: str
    item_metadata: ItemMetadata
    users: Users
    events: Events

    def content_hash(self) -> str:
        """A hash of every array, recorded in each artefact folder."""
        h = hashlib.sha256(self.name.encode())
        for part in (self.item_metadata, self.users, self.events):
            for f in fields(part):
                value = getattr(part, f.name)
                if isinstance(value, np.ndarray):
                    h.update(np.ascontiguousarray(value).tobytes())
                else:
                    h.update(repr(value).encode())
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class History:
    """One user's events, oldest first: the request-path input."""

    item: np.ndarray  # (L,) int64
    action: np.ndarray  # (L,) int64
    timestamp: np.ndarray  # (L,) int64
    device: np.ndarray  # (L,) int64

    def __len__(self) -> int:
        return int(self.item.shape[0])

    def tail(self, n: int) -> History:
        return History(self.item[-n:], self.action[-n:], self.timestamp[-n:], self.device[-n:]) if n < len(self) else self

    def head(self, n: int) -> History:
        return History(self.item[:n], self.action[:n], self.timestamp[:n], self.device[:n])

    @staticmethod
    def empty() -> History:
        z = np.zeros(0, dtype=np.int64)
        return History(z, z, z, z)
