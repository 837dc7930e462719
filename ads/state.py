"""Ad state in Redis behind one small class: frequency caps, served-ad impressions, campaign
spend, charged click tokens and the pacing throttle. Key schema, TTLs and the atomicity of each
step: ads/README.md ("State in Redis").

Every key one script touches shares one hash tag: ``{u:<user_id>}`` for a user's caps and
impressions (``lua/record_served.lua``), ``{c:<campaign>}`` for a campaign's spend, charged
tokens and throttle (``lua/charge_click.lua``, ``lua/pace.lua``), so each script runs on one
Redis Cluster slot. Every method takes its clock (``day``, ``now``) from the caller, so a
simulation can run a whole day on a simulated clock. Redis errors become ``StoreUnavailable``:
the caller serves no ads (caps fail closed) and acknowledges no click it could not charge.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from genrec.ads.pacing import PaceState, PacingController, hour_of_day
from genrec.feed.redis_clients import RedisClients, lua_script, store_call
from genrec.settings import AdsConfig

ChargeOutcome = Literal["charged", "duplicate", "exhausted"]
MICROS = 1_000_000  # money is stored in integer micro-units: sums stay exact all day
_SPEND_FIELDS = ("total", "budget", "p", "t", "s", "es", "ex")


def user_key(prefix: str, user_id: str, suffix: str) -> str:
    return f"{prefix}:{{u:{user_id}}}:{suffix}"


def campaign_key(prefix: str, campaign: int, suffix: str) -> str:
    return f"{prefix}:{{c:{int(campaign)}}}:{suffix}"


def _micros(amount: float) -> int:
    return int(round(amount * MICROS))


def _num(raw: Any, default: float = 0.0) -> float:
    return default if raw is None else float(raw)


@dataclass(frozen=True)
class ServedAd:
    """An ad placed on a page, as recorded with its impression."""

    campaign: int
    frequency_cap: int  # impressions per user per UTC day
    item: int
    price: float  # GSP price per click, currency units
    bucket: int  # experiment bucket it was served under
    trace_id: str


@dataclass(frozen=True)
class Click:
    """A click to charge: the campaign, the event token's id (the idempotency key), the price
    signed into the token at serve time and the campaign's daily budget."""

    campaign: int
    token_id: str
    price: float
    budget: float


@dataclass(frozen=True)
class AdSnapshot:
    cap_counts: dict[int, int]  # this user's impressions per campaign today
    spend: dict[int, float]  # each campaign's spend today, currency units
    serve_probability: dict[int, float]  # the pacing throttle (1.0 everywhere with pacing off)


class AdState:
    def __init__(
        self,
        url: str,
        timeout_s: float,
        prefix: str = "ads",
        *,
        pacing: PacingController | None = None,
        ttl_s: int = AdsConfig.state_ttl_s,
        served_cap: int = AdsConfig.served_cap,
        campaign_cache_s: float = 0.0,
    ) -> None:
        """``pacing``: the throttle ``snapshot`` applies and keeps up to date (None: no pacing,
        every probability is 1). ``ttl_s``: lifetime of the per-day keys (2 days: yesterday's
        clicks still find their charged tokens). ``served_cap``: impression records per user."""
        # writes are never resent by the client library (a reply lost after a script ran would
        # apply it twice); a caller's retry is safe where the step is idempotent (click tokens)
        self.clients = RedisClients.open(url, timeout_s)
        self.redis, self.writes = self.clients.reads, self.clients.writes
        self.prefix = prefix
        self.pacing = pacing
        self.ttl_s = ttl_s
        self.served_cap = served_cap
        # campaign rows (spend, throttle) read at most every campaign_cache_s of the caller's
        # clock per process: they only filter eligibility (the charge script enforces budgets)
        self.campaign_cache_s = campaign_cache_s
        self._campaigns: dict[tuple[int, str], tuple[float, float, float]] = {}  # (c, day) -> (spend, p, read at)
        self._record = self.writes.register_script(lua_script("genrec.ads", "record_served.lua"))
        self._charge = self.writes.register_script(lua_script("genrec.ads", "charge_click.lua"))
        self._pace = self.writes.register_script(lua_script("genrec.ads", "pace.lua"))

    @classmethod
    def from_config(cls, cfg: AdsConfig, url: str, timeout_s: float) -> AdState:
        pacing = PacingController.from_config(cfg) if cfg.pacing else None
        return cls(
            url,
            timeout_s,
            cfg.key_prefix,
            pacing=pacing,
            ttl_s=cfg.state_ttl_s,
            served_cap=cfg.served_cap,
            campaign_cache_s=cfg.campaign_cache_s,
        )

    def cap_key(self, user_id: str, day: str) -> str:
        return user_key(self.prefix, user_id, f"cap:{day}")

    def served_key(self, user_id: str) -> str:
        return user_key(self.prefix, user_id, "served")

    def spend_key(self, campaign: int, day: str) -> str:
        return campaign_key(self.prefix, campaign, f"spend:{day}")

    def charged_key(self, campaign: int, day: str) -> str:
        return campaign_key(self.prefix, campaign, f"charged:{day}")

    @store_call
    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def close(self) -> None:
        await self.clients.close()

    @store_call
    async def snapshot(
        self, user_id: str, campaigns: Sequence[int], day: str, now: float, budgets: Mapping[int, float] | None = None
    ) -> AdSnapshot:
        """The user's cap counts, the campaigns' spend and their serve probabilities, in one
        pipelined read (not atomic: a cap is enforced by ``record_served``, a budget by
        ``charge_click``). A campaign whose throttle is due gets a new one (``lua/pace.lua``,
        compare-and-set). Its budget: ``budgets[c]``, else the one its last click recorded; a
        campaign with neither has had no click today and is served at p = 1. A campaign's row is
        read at most every ``campaign_cache_s`` of ``now`` in this process (the cap counts, per
        user, every time)."""
        campaigns = [int(c) for c in campaigns]
        if not campaigns:
            return AdSnapshot({}, {}, {})
        cached = {c: v for c in campaigns if (v := self._campaigns.get((c, day))) is not None and now - v[2] < self.campaign_cache_s}
        stale = [c for c in campaigns if c not in cached]
        async with self.redis.pipeline(transaction=False) as p:
            p.hmget(self.cap_key(user_id, day), [str(c) for c in campaigns])
            for c in stale:
                p.hmget(self.spend_key(c, day), list(_SPEND_FIELDS))
            caps, *rows = await p.execute()
        cap_counts = {c: int(n or 0) for c, n in zip(campaigns, caps)}
        spend = {c: _num(row[0]) / MICROS for c, row in zip(stale, rows)}
        if self.pacing is None:
            probability = {c: 1.0 for c in stale}
        else:
            paced, due = await self._paced(stale, rows, day, now, budgets or {})
            probability = paced | due
        if self.campaign_cache_s > 0:
            if any(d != day for _, d in self._campaigns):  # a new day: yesterday's rows are done
                self._campaigns = {k: v for k, v in self._campaigns.items() if k[1] == day}
            for c in stale:
                self._campaigns[(c, day)] = (spend[c], probability[c], now)
        for c, (s, pr, _) in cached.items():
            spend[c], probability[c] = s, pr
        return AdSnapshot(cap_counts, spend, probability)

    async def _paced(
        self, campaigns: list[int], rows: list[list[Any]], day: str, now: float, budgets: Mapping[int, float]
    ) -> tuple[dict[int, float], dict[int, float]]:
        """The throttle in force per campaign, and the new one of those that were due."""
        assert self.pacing is not None
        probability: dict[int, float] = {}
        updates: list[tuple[int, bytes | str, PaceState]] = []
        for c, (total, stored_budget, p, t, s, es, ex) in zip(campaigns, rows):
            state = PaceState(_num(p, 1.0), None if t is None else float(t), _num(s) / MICROS, _num(es), _num(ex))
            budget = budgets.get(c)
            if budget is None and stored_budget is not None:
                budget = float(stored_budget) / MICROS
            probability[c] = state.p
            if budget is not None and self.pacing.due(state, now):
                new = self.pacing.update(state, _num(total) / MICROS, float(budget), day, now)
                updates.append((c, t if t is not None else "", new))
        if not updates:
            return probability, {}
        async with self.writes.pipeline(transaction=False) as pipe:
            for c, seen, new in updates:
                args = [seen, repr(new.p), repr(new.t), _micros(new.spend), repr(new.spend_ema), repr(new.exposure_ema), self.ttl_s]
                await self._pace(keys=[self.spend_key(c, day)], args=args, client=pipe)
            answers = await pipe.execute()
        return probability, {c: _num(a, 1.0) for (c, _, _), a in zip(updates, answers)}

    @store_call
    async def record_served(self, user_id: str, day: str, ads: Sequence[ServedAd], ttl_s: int, now: float | None = None) -> list[bool]:
        """Place ``ads`` (in page order) under their frequency caps, atomically: each one is
        accepted, counted and recorded only while the user's count for its campaign today is
        under its cap. The caller removes the refused ones from the page. ``now``: the
        impression time recorded (None: the Redis server's clock)."""
        if not ads:
            return []
        args: list[Any] = [ttl_s, self.served_cap, len(ads), "" if now is None else repr(float(now))]
        for ad in ads:
            args += [int(ad.campaign), int(ad.frequency_cap), int(ad.item), repr(float(ad.price)), int(ad.bucket), ad.trace_id]
        placed = await self._record(keys=[self.cap_key(user_id, day), self.served_key(user_id)], args=args)
        return [bool(x) for x in placed]

    async def charge_click(self, campaign: int, day: str, token_id: str, price: float, budget: float, now: float) -> ChargeOutcome:
        """Charge one click, once per ``token_id`` and only while today's spend is under
        ``budget`` (concurrent clicks overspend by at most one price). ``day``: the UTC day of
        the serve (the token's), so a retry after midnight finds the same charged set."""
        return (await self.charge_clicks([Click(campaign, token_id, price, budget)], day, now))[0]

    @store_call
    async def charge_clicks(self, clicks: Sequence[Click], day: str, now: float) -> list[ChargeOutcome]:
        """``charge_click`` for several clicks in one pipeline: each charge is atomic in its own
        campaign's slot, the batch is not. On an error some may have been charged: retrying the
        whole batch is safe (a charged token answers "duplicate")."""
        if not clicks:
            return []
        hour = f"h:{hour_of_day(day, now):02d}"
        async with self.writes.pipeline(transaction=False) as pipe:
            for k in clicks:
                keys = [self.spend_key(k.campaign, day), self.charged_key(k.campaign, day)]
                await self._charge(keys=keys, args=[k.token_id, _micros(k.price), _micros(k.budget), hour, self.ttl_s], client=pipe)
            answers = await pipe.execute()
        return [_outcome(a[0]) for a in answers]

    @store_call
    async def hourly_spend(self, campaigns: Sequence[int], day: str) -> dict[int, list[float]]:
        """Each campaign's spend in each hour of ``day`` (reports, the pacing benchmark)."""
        fields = [f"h:{h:02d}" for h in range(24)]
        async with self.redis.pipeline(transaction=False) as p:
            for c in campaigns:
                p.hmget(self.spend_key(c, day), fields)
            rows = await p.execute()
        return {int(c): [_num(x) / MICROS for x in row] for c, row in zip(campaigns, rows)}


def _outcome(raw: bytes | str) -> ChargeOutcome:
    value = raw.decode() if isinstance(raw, bytes) else raw
    if value not in ("charged", "duplicate", "exhausted"):
        raise ValueError(f"charge_click.lua answered {value!r}")
    return cast(ChargeOutcome, value)
