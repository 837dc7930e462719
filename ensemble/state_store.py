"""Encoder states in Redis: the out-of-process alternative to the in-process ``EncoderCache``.

Same interface (``take`` / ``store`` / ``stats``), so the serving pipeline does not know which
one it has. With Redis every model instance and every server sees the state a user's last
request left, so the hit rate does not depend on which instance a request lands on; the price
is a GET and a SET of the serialised state (~106 KB in `small`) per request
(``bench/results/encoder_state_placement.json``).

The memory cap and eviction are Redis's: run it with ``--maxmemory <bytes> --maxmemory-policy
allkeys-lru``; entries also expire ``ttl_s`` after their last write. An unreachable Redis is
served as a miss (the state is rebuilt from the whole history) and counted in ``stats.errors``;
the request does not fail.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from genrec.data.schema import History
from genrec.ensemble.encoder_cache import CacheStats, history_fingerprint
from genrec.ensemble.encoder_state import EncoderState

FINGERPRINT_BYTES = 32  # hex digest of history_fingerprint


def encoder_tag(graph: Path) -> str:
    """A short digest of the encoder graph's bytes: the key space of its states in Redis."""
    digest = hashlib.sha256()
    with open(graph, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


class RedisEncoderCache:
    def __init__(self, url: str, ttl_s: int, weights: str = "", timeout_s: float = 0.05) -> None:
        """``weights`` names the encoder graph the states were computed with (``encoder_tag``):
        a state is only valid for those weights, so two versions served side by side (canary,
        rollback) each see their own states and never each other's."""
        import redis

        self.redis = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.ttl_s, self.prefix = ttl_s, f"genrec:encoder-state:{weights}:"
        self.stats = CacheStats(bytes=None, entries=None)

    def _key(self, user: str) -> str:
        return self.prefix + user

    def take(self, user: str, history: History) -> tuple[EncoderState | None, int]:
        import redis

        try:
            raw = self.redis.get(self._key(user))
        except redis.RedisError:
            self.stats.errors += 1
            raw = None
        if isinstance(raw, bytes) and raw:  # bytes: the client does not decode responses
            fp = raw[:FINGERPRINT_BYTES].decode()
            n = int.from_bytes(raw[FINGERPRINT_BYTES : FINGERPRINT_BYTES + 8], "little")
            if n <= len(history) and history_fingerprint(history, n) == fp:
                self.stats.hits += 1
                return EncoderState.from_bytes(raw[FINGERPRINT_BYTES + 8 :]), n
        self.stats.misses += 1
        return None, 0

    def store(self, user: str, history: History, state: EncoderState) -> None:
        import redis

        payload = history_fingerprint(history, len(history)).encode() + len(history).to_bytes(8, "little") + state.to_bytes()
        try:
            self.redis.set(self._key(user), payload, ex=self.ttl_s)
        except redis.RedisError:
            self.stats.errors += 1
