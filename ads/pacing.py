"""Budget pacing: a campaign's spend follows its daily budget through the day, shaped like the
day's expected traffic, instead of running out by noon.

- **Target curve**: ``target(t) = budget x share of the day's expected traffic before t`` (a UTC
  day; 24 hourly weights, uniform within an hour). ``DIURNAL`` is the default shape.
- **Throttle**: every ``interval_s`` (a minute) a campaign gets a serve probability ``p``; the feed
  draws ``u ~ U(0, 1)`` per campaign per request and lets the campaign into the auction when
  ``u < p``. ``PacingController.update`` sets ``p`` to close the gap to the target curve over the
  next ``horizon_s``:

      need   = target(t + horizon) - spend            # the gap now + the plan for the horizon
      demand = EMA(spend) / EMA(p x traffic share)    # what the campaign spends per unit of
                                                      # traffic when served at p = 1
      p      = clamp(need / (demand x traffic share of the horizon), p_min, 1)

  Ahead of the curve ``need`` shrinks and so does ``p`` (to ``p_min`` when the horizon's share is
  already spent), behind it ``p`` grows (to 1); out of budget ``p = 0``. ``demand`` is a ratio of
  two exponential moving averages (time constant ``smoothing_s``) over the throttle's own past
  intervals, so one lucky click at a low ``p`` does not swing it as a per-minute ratio would, and
  it follows the auction as competitors throttle or run out. Until the first click of the day
  ``demand`` is unknown and a campaign behind its curve is served at ``p = 1``. The horizon
  shrinks toward midnight, so the last hours spend what is left of the budget.

Pure functions over a ``PaceState``; ``ads/state.py`` keeps the state in Redis beside the
campaign's spend and updates it at most once per interval (compare-and-set on its time), so
every feed replica applies the same throttle. Measured on a simulated day: ads/README.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from genrec.settings import AdsConfig

DAY_S = 86_400
HOUR_S = 3_600

# Expected traffic per UTC hour of a feed whose audience lives around UTC (relative weights;
# normalised by TrafficCurve). The shape of a mobile content app: a trough at 3-5 h (a fifth of
# the peak), a morning rise, a flat day and the evening peak at 20-21 h.
DIURNAL: tuple[float, ...] = (
    0.55, 0.38, 0.27, 0.21, 0.19, 0.22, 0.33, 0.52, 0.72, 0.84, 0.90, 0.95,
    1.00, 0.98, 0.94, 0.92, 0.95, 1.02, 1.12, 1.25, 1.35, 1.38, 1.20, 0.85,
)  # fmt: skip


def utc_day(now: float) -> str:
    """The UTC day of a timestamp as ``yyyymmdd`` (the day of caps, spend and pacing)."""
    return datetime.fromtimestamp(now, tz=timezone.utc).strftime("%Y%m%d")


def day_start(day: str) -> float:
    """The timestamp of 00:00 UTC of a ``yyyymmdd`` day."""
    return datetime.strptime(day, "%Y%m%d").replace(tzinfo=timezone.utc).timestamp()


def hour_of_day(day: str, now: float) -> int:
    """The hour of ``day`` (0-23) that ``now`` falls in, clamped into the day (a click after
    midnight on an ad served the day before counts in that day's last hour)."""
    return min(23, max(0, int((now - day_start(day)) // HOUR_S)))


class TrafficCurve:
    """The cumulative share of a day's expected traffic, from 24 hourly weights."""

    def __init__(self, hourly: Sequence[float] = DIURNAL) -> None:
        if len(hourly) != 24 or min(hourly) < 0 or sum(hourly) <= 0:
            raise ValueError("a traffic curve needs 24 non-negative hourly weights with a positive sum")
        total = float(sum(hourly))
        self.hourly = tuple(float(w) / total for w in hourly)  # share of the day in each hour
        self._before = [0.0]  # share before each hour boundary
        for w in self.hourly:
            self._before.append(self._before[-1] + w)
        self._before[-1] = 1.0

    def share_before(self, seconds: float) -> float:
        """Share of the day's traffic before ``seconds`` after midnight (0 at 0, 1 at the day's end)."""
        if seconds <= 0:
            return 0.0
        if seconds >= DAY_S:
            return 1.0
        h = int(seconds // HOUR_S)
        return self._before[h] + self.hourly[h] * (seconds - h * HOUR_S) / HOUR_S

    def share_between(self, a: float, b: float) -> float:
        return max(0.0, self.share_before(b) - self.share_before(a))


def target_spend(budget: float, curve: TrafficCurve, seconds: float) -> float:
    """Where a campaign's spend should be ``seconds`` after midnight."""
    return budget * curve.share_before(seconds)


@dataclass(frozen=True)
class PaceState:
    """A campaign's throttle as last set (kept in Redis by ``ads.state.AdState``)."""

    p: float = 1.0  # serve probability in force
    t: float | None = None  # when it was set (None: not yet today)
    spend: float = 0.0  # the campaign's spend today when it was set
    spend_ema: float = 0.0  # EMA of spend per interval
    exposure_ema: float = 0.0  # EMA of p x traffic share per interval (same decay)

    @property
    def demand(self) -> float | None:
        """Estimated spend per unit of traffic share at p = 1 (None until a click was seen)."""
        if self.spend_ema <= 0 or self.exposure_ema <= 0:
            return None
        return self.spend_ema / self.exposure_ema


@dataclass(frozen=True)
class PacingController:
    curve: TrafficCurve = TrafficCurve()
    interval_s: float = AdsConfig.pacing_interval_s  # the throttle changes at most this often
    horizon_s: float = AdsConfig.pacing_horizon_s  # a gap is closed over this much time (clamped at midnight)
    smoothing_s: float = AdsConfig.pacing_smoothing_s  # time constant of the demand estimate's EMAs
    p_min: float = AdsConfig.pacing_p_min  # a campaign ahead of its curve still serves now and then (keeps the estimate alive)

    @classmethod
    def from_config(cls, cfg: AdsConfig, curve: TrafficCurve | None = None) -> PacingController:
        return cls(
            curve or TrafficCurve(),
            interval_s=cfg.pacing_interval_s,
            horizon_s=cfg.pacing_horizon_s,
            smoothing_s=cfg.pacing_smoothing_s,
            p_min=cfg.pacing_p_min,
        )

    def due(self, state: PaceState, now: float) -> bool:
        return state.t is None or now - state.t >= self.interval_s

    def probability(self, demand: float | None, spend: float, budget: float, seconds: float) -> float:
        """The serve probability that brings ``spend`` onto the target curve over the horizon."""
        if budget <= 0 or spend >= budget:
            return 0.0
        end = min(float(DAY_S), seconds + self.horizon_s)
        need = target_spend(budget, self.curve, end) - spend
        if need <= 0:
            return self.p_min
        future = self.curve.share_between(seconds, end)
        if demand is None or future <= 0:
            return 1.0
        return min(1.0, max(self.p_min, need / (demand * future)))

    def update(self, state: PaceState, spend: float, budget: float, day: str, now: float) -> PaceState:
        """The state for the next interval: the past interval's spend and exposure folded into the
        demand estimate, then a new probability. ``state.t`` before today's midnight (yesterday's
        state) only contributes its demand estimate."""
        start = day_start(day)
        seconds = now - start
        es, ex = state.spend_ema, state.exposure_ema
        if state.t is not None and now > state.t:
            since = max(state.t, start)
            decay = math.exp(-(now - state.t) / self.smoothing_s)
            spent = spend - state.spend if state.t >= start else spend
            es = es * decay + max(0.0, spent)
            ex = ex * decay + state.p * self.curve.share_between(since - start, seconds)
        fresh = replace(state, spend_ema=es, exposure_ema=ex)
        return PaceState(self.probability(fresh.demand, spend, budget, seconds), now, spend, es, ex)
