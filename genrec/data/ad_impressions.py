"""Synthetic ad impressions and clicks whose click probability is known, so a pCTR model has
something real to learn and its calibration can be checked against the truth.

A *request* is a moment in a user's event log (the history is the user's events before it, the
request happens at the next event's time and device, as ``genrec.heldout`` builds requests);
each request shows ``slots`` distinct ads at positions ``0..slots-1``. The click is a Bernoulli
draw of

    p = sigmoid(a + b * interest(user, ad category) + c * quality(ad) + d * position_effect(pos))

- ``interest``: the share of the ad's category among *all* of the user's events (the user's
  taste; the generator's latent interests shape it). A model sees only the events before the
  request, so it can infer the interest but not read it.
- ``quality``: a per-ad latent, standard normal. It is not observable; a model learns it from
  the ad's *quality proxy* (quality plus Gaussian noise, as a creative-review score would be)
  and from the ad's click-through rate in the warm-up log (below).
- ``position_effect(pos) = -log2(1 + pos)``: 0 at the top slot.

Which ads a request shows: half the slots (on average) are *targeted* (an ad of a category drawn
from the user's history so far), the rest drawn uniformly from all ads; then shuffled over the
positions, so position is independent of the ad and its effect is identifiable.

Phases (per request): each user's first ``warmup_requests`` requests form the *warm-up log*,
whose clicks give each ad's prior click-through rate (a model feature, never a label of the model's
own training rows, so no label leaks into a feature); the user's later requests are the model's
``train`` / ``valid`` / ``test`` rows, split by user (a held-out user is never seen in training).

Deterministic given the data set and the seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from genrec.data.schema import Dataset, ItemKind
from genrec.data.split import Split


class Phase(IntEnum):
    WARMUP = 0
    TRAIN = 1
    VALID = 2
    TEST = 3


@dataclass(frozen=True)
class ClickTruth:
    """The ground truth's constants: CTRs of about 1-10% (mean about 3%)."""

    intercept: float = -4.2  # a: an uninterested user, an average ad, the top slot: 1.5%
    interest: float = 4.0  # b: per unit of category share (a 40% share: x ~4.9 odds)
    quality: float = 0.6  # c: per standard deviation of ad quality
    position: float = 0.45  # d: per unit of -log2(1 + pos)
    quality_proxy_noise: float = 0.8  # standard deviation of the proxy's noise (quality's is 1)

    def logit(self, interest: np.ndarray, quality: np.ndarray, position: np.ndarray) -> np.ndarray:
        return self.intercept + self.interest * interest + self.quality * quality + self.position * position_effect(position)

    def probability(self, interest: np.ndarray, quality: np.ndarray, position: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logit(interest, quality, position)))


TRUTH = ClickTruth()


def position_effect(position: np.ndarray) -> np.ndarray:
    return -np.log2(1.0 + np.asarray(position, dtype=np.float64))


@dataclass(frozen=True)
class AdQuality:
    """Per item (NaN on non-ad items): the latent quality and its observable noisy proxy."""

    quality: np.ndarray  # (n_items,) float64, latent
    proxy: np.ndarray  # (n_items,) float32, observable


def ad_quality(ds: Dataset, seed: int, truth: ClickTruth = TRUTH) -> AdQuality:
    """Each ad's latent quality and observable proxy (deterministic by seed)."""
    rng = np.random.default_rng([seed, 12, 1])
    n = ds.item_metadata.n_items
    is_ad = ds.item_metadata.kind == ItemKind.AD
    q = rng.standard_normal(n)
    proxy = q + truth.quality_proxy_noise * rng.standard_normal(n)
    return AdQuality(np.where(is_ad, q, np.nan), np.where(is_ad, proxy, np.nan).astype(np.float32))


@dataclass(frozen=True)
class AdImpressions:
    # per request
    request_user: np.ndarray  # (R,) int64
    request_start: np.ndarray  # (R,) int64, the history is events[start:end]
    request_end: np.ndarray  # (R,) int64, absolute index of the event the request happens at
    request_phase: np.ndarray  # (R,) int8, Phase
    # per impression
    request: np.ndarray  # (N,) int64, index into the request arrays
    ad: np.ndarray  # (N,) int64, item id of the ad
    position: np.ndarray  # (N,) int64, 0 = top slot
    interest: np.ndarray  # (N,) float64, ground-truth interest of the user in the ad's category
    p_true: np.ndarray  # (N,) float64, ground-truth click probability
    click: np.ndarray  # (N,) int8
    quality: AdQuality
    truth: ClickTruth

    def __len__(self) -> int:
        return int(self.ad.shape[0])

    @property
    def phase(self) -> np.ndarray:
        """(N,) the phase of each impression."""
        return self.request_phase[self.request]

    def rows(self, phase: Phase) -> np.ndarray:
        return np.flatnonzero(self.phase == phase)


def user_interest(ds: Dataset) -> np.ndarray:
    """(n_users, n_categories) ground-truth interest: each category's share of the user's events."""
    ev, n_cat = ds.events, ds.item_metadata.n_categories
    counts = np.zeros((ev.n_users, n_cat))
    np.add.at(counts, (ev.user, ds.item_metadata.category[ev.item]), 1.0)
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)


def generate_impressions(
    ds: Dataset,
    split: Split,
    seed: int,
    requests_per_user: int = 8,
    warmup_requests: int = 2,
    slots: int = 6,
    max_history_events: int = 4_096,
    shares: tuple[float, float] = (0.7, 0.15),
    truth: ClickTruth = TRUTH,
) -> AdImpressions:
    """Impressions of ``requests_per_user`` requests per eligible user, at random moments inside
    the user's training events (never at a validation or test target of the recommender), each
    with ``slots`` ads. ``shares``: the train and validation shares of users (the rest: test)."""
    meta = ds.item_metadata
    ads = np.flatnonzero(meta.kind == ItemKind.AD).astype(np.int64)
    if ads.size < slots:
        raise ValueError(f"{ads.size} ads in the catalogue: at least {slots} are needed to fill a request's slots")
    rng = np.random.default_rng([seed, 12, 2])
    quality = ad_quality(ds, seed, truth)
    interest = user_interest(ds)
    category = meta.category.astype(np.int64)
    ad_cat = category[ads]
    by_cat = [ads[ad_cat == c] for c in range(meta.n_categories)]

    users = split.eligible_users
    u_split = rng.random(users.size)
    user_phase = np.where(u_split < shares[0], Phase.TRAIN, np.where(u_split < shares[0] + shares[1], Phase.VALID, Phase.TEST))

    r_user, r_start, r_end, r_phase = [], [], [], []
    i_req, i_ad = [], []
    for u, phase in zip(users.tolist(), user_phase.tolist()):
        first, train_end = int(split.offsets[u]), int(split.train_end[u])
        # the request happens at event `end` (a training event), with at least one event before it
        lo, hi = first + 1, train_end - 1
        if hi < lo:
            continue
        ends = np.sort(rng.integers(lo, hi + 1, size=requests_per_user))
        for j, end in enumerate(ends.tolist()):
            start = max(first, end - max_history_events)
            hist_cat = category[ds.events.item[start:end]]
            chosen: list[int] = []
            while len(chosen) < slots:
                pool = by_cat[int(hist_cat[rng.integers(hist_cat.size)])] if rng.random() < 0.5 else ads
                if pool.size == 0:
                    pool = ads
                a = int(pool[rng.integers(pool.size)])
                if a not in chosen:
                    chosen.append(a)
            r_user.append(u)
            r_start.append(start)
            r_end.append(end)
            r_phase.append(Phase.WARMUP if j < warmup_requests else phase)
            i_req += [len(r_user) - 1] * slots
            i_ad += chosen  # in slot order: drawn independently of position

    request = np.asarray(i_req, dtype=np.int64)
    ad = np.asarray(i_ad, dtype=np.int64)
    position = np.tile(np.arange(slots, dtype=np.int64), len(r_user))
    req_user = np.asarray(r_user, dtype=np.int64)
    true_interest = interest[req_user[request], category[ad]]
    p = truth.probability(true_interest, quality.quality[ad], position)
    click = (rng.random(p.size) < p).astype(np.int8)
    return AdImpressions(
        req_user,
        np.asarray(r_start, dtype=np.int64),
        np.asarray(r_end, dtype=np.int64),
        np.asarray(r_phase, dtype=np.int8),
        request,
        ad,
        position,
        true_interest,
        p,
        click,
        quality,
        truth,
    )
