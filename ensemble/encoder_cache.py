"""Per-user encoder-state cache: LRU, capped in bytes.

A request carries the user's full history. The cache keeps, per user, the encoder state for
the history prefix it has seen and a fingerprint of that prefix. If the new history starts with
the cached prefix (same fingerprint), only the new events are encoded: a returning user with k
new events costs O(k) encoder work. Otherwise (first visit, edited history, eviction) the state
is rebuilt from scratch: a miss, with the same result as a hit.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import numpy as np

from genrec.data.schema import History


class SizedState(Protocol):
    def nbytes(self) -> int: ...


S = TypeVar("S", bound=SizedState)


def history_fingerprint(h: History, n: int) -> str:
    d = hashlib.blake2b(digest_size=16)
    for arr in (h.item[:n], h.action[:n], h.timestamp[:n], h.device[:n]):
        d.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
    return d.hexdigest()


@dataclass
class _Entry(Generic[S]):
    state: S
    n_events: int
    fingerprint: str
    nbytes: int


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    # states held in this process's memory; None for an out-of-process store (Redis holds them,
    # and its own INFO memory / DBSIZE are the figures there)
    bytes: int | None = 0
    entries: int | None = 0
    errors: int = 0  # store unreachable (out-of-process stores): served as a miss


class EncoderCache(Generic[S]):
    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self._entries: OrderedDict[str, _Entry[S]] = OrderedDict()
        self.stats = CacheStats()
        self._bytes = 0  # what stats.bytes shows (an int here: this store is in-process)

    def take(self, user: str, history: History) -> tuple[S | None, int]:
        """(state, events it covers) if a cached prefix of ``history`` exists, else (None, 0).

        The entry leaves the cache: the caller extends the state in place and ``store``s it back,
        so a failure half-way never leaves a state that disagrees with its fingerprint.
        """
        e = self._entries.pop(user, None)
        if e is not None:
            self._bytes -= e.nbytes
            self.stats.bytes, self.stats.entries = self._bytes, len(self._entries)
            if e.n_events <= len(history) and history_fingerprint(history, e.n_events) == e.fingerprint:
                self.stats.hits += 1
                return e.state, e.n_events
        self.stats.misses += 1
        return None, 0

    def store(self, user: str, history: History, state: S) -> None:
        old = self._entries.pop(user, None)
        if old is not None:
            self._bytes -= old.nbytes
        size = state.nbytes()
        if size > self.capacity_bytes:
            self.stats.bytes, self.stats.entries = self._bytes, len(self._entries)
            return
        self._entries[user] = _Entry(state, len(history), history_fingerprint(history, len(history)), size)
        self._bytes += size
        while self._bytes > self.capacity_bytes:
            _, ev = self._entries.popitem(last=False)
            self._bytes -= ev.nbytes
            self.stats.evictions += 1
        self.stats.bytes, self.stats.entries = self._bytes, len(self._entries)
