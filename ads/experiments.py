"""Experiment buckets and the canary split, by a stable hash of the user.

The hash is SHA-256 of ``salt:user_id`` (not Python's ``hash``, which is salted per process), so
every replica of the feed, on any machine, puts a user in the same bucket. Buckets and the
canary use different salts, so the two splits are independent of each other.
"""

from __future__ import annotations

import hashlib

from genrec.settings import AdsConfig

AB_SALT = "ab"
CANARY_SALT = "canary"


def stable_unit(user_id: str, salt: str) -> float:
    """A number in [0, 1), uniform over users and the same in every process."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def ab_bucket(user_id: str, n_buckets: int, requested: int | None = None) -> int:
    """The user's experiment bucket in ``0..n_buckets-1``; a request may name its own."""
    if n_buckets < 1:
        raise ValueError(f"n_buckets must be at least 1, got {n_buckets}")
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or not 0 <= requested < n_buckets:
            raise ValueError(f"ab_bucket {requested!r} is out of range: this deployment has {n_buckets} bucket(s), 0..{n_buckets - 1}")
        return requested
    return min(int(stable_unit(user_id, AB_SALT) * n_buckets), n_buckets - 1)


def ad_load(cfg: AdsConfig, user_id: str, requested: int | None = None) -> tuple[int, int]:
    """``(bucket, ad_every)``: the user's bucket and that bucket's ad density policy."""
    if not cfg.ab_buckets:
        return 0, cfg.ad_every
    bucket = ab_bucket(user_id, len(cfg.ab_buckets), requested)
    return bucket, int(cfg.ab_buckets[bucket])


def in_canary(user_id: str, share: float) -> bool:
    """Whether the newest ``recommend`` version serves this user.

    Monotone in ``share``: a user in the canary at share s stays in it at every larger share, so
    raising the share only adds users (and 0 is the rollback: nobody).
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"canary share must be within [0, 1], got {share}")
    return stable_unit(user_id, CANARY_SALT) < share
