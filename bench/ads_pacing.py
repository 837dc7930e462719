"""One simulated day of ad auctions against a real redis-server: budgets paced vs not paced.

    python -m bench.ads_pacing                     # the committed figures (3-7 minutes on 2 cores)
    python -m bench.ads_pacing --campaigns 20 --auctions 200000 --out /tmp/pacing   # a quick look

The clock is simulated (minute by minute, 00:00 to 24:00 UTC of one day); everything else is real:
each campaign's spend, charged tokens and throttle live in Redis and change only through
``genrec.ads.state.AdState`` (``charge_clicks``, and ``snapshot`` which updates the pacing
throttle once a minute with ``genrec.ads.pacing.PacingController``, as every feed replica would).

The market. ``--campaigns`` campaigns, bids (CPC) drawn like the synthetic catalogue's ads
(log-normal around 0.50), a base CTR per campaign (log-normal around 4 %), each targeting 3 of
``--categories`` user categories, so an auction (one feed page, a user of one category) has the
same number of candidates. Auctions arrive per minute along the default diurnal curve
(``genrec.ads.pacing.DIURNAL``) with a +-10 % (log-normal) deviation per hour, since a real day
never follows the expected curve exactly. Per auction: the candidates still in budget (spend as
the last snapshot read it) and let through by the throttle (``u < p``) bid with a pCTR drawn
around their base CTR; the GSP auction for ``--slots`` slots (``genrec.ads.auction`` rules,
vectorised here, and checked against ``run_auction`` on the first minute's auctions); a click
with probability pCTR (calibrated), charged at its GSP price through ``charge_clicks``.

Budgets. A first pass runs the same day without budgets or pacing (numpy only) and measures each
campaign's demand: what it would spend unconstrained. Each budget is a random 35-65 % of that
demand, so every campaign could spend its budget early in the day: that is the case pacing exists
for (with budgets above demand, pacing has nothing to do). The paced and unpaced runs replay the
same auctions, pCTRs and click draws (common random numbers per minute).

Scale. Whether a campaign-hour lands within +-20 % of its target is a question of click counts
as much as of pacing: n Poisson clicks spread by 1/sqrt(n), and the quietest hour holds 1 % of
the day's traffic, so a campaign held to 2,000 clicks a day at a steady rate would miss +-20 % in about
one hour in eight from noise alone (the throttle, reacting to the spend within the hour, does
better). The defaults (200 campaigns, 2 M auctions of 3 slots) give a campaign about 1,500 clicks
a day at the median, 400 at the 10th percentile (a campaign that rarely wins has a small
demand, hence a small budget): more campaigns with fewer clicks each would measure noise, not
pacing, and the Python client charges about 20k clicks a second here. Clicks arrive a while after the serve
(exponential, mean 2 minutes; those after midnight count on the day of the serve), and every
100th click is sent twice (a lost answer retried): the second answer must be "duplicate".

Report: per paced campaign-hour, spend within +-20 % of the hour's target (the hour's slice of the
curve), and the cumulative spend at each hour's end within +-20 % of the curve; the share of
campaigns spending >= 95 % of their budget by midnight; for the unpaced run, the hour each
campaign ran out. Writes ``bench/results/ads_pacing.json`` and ``ads_pacing.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from genrec.ads.auction import AdBid, run_auction
from genrec.ads.pacing import DIURNAL, PacingController, TrafficCurve, day_start
from genrec.ads.state import AdState, Click
from genrec.artifacts import machine, now_iso, versions, write_json
from genrec.runtime.redis_server import RedisServer
from genrec.settings import AdsConfig

OUT = Path("bench/results")
DAY = "20260101"
ECPM = 0.02  # a campaign's expected eCPM (base CTR x bid): 4 % CTR at the median bid of 0.50
ECPM_SIGMA = 0.25  # spread of the expected eCPM across campaigns (log-normal)
PCTR_SIGMA = 0.7  # spread of a campaign's pCTR across users (log-normal)
HOUR_NOISE = 0.10  # the day's deviation from the expected traffic curve, per hour (log-normal)
CHARGE_BATCH = 2_000  # clicks per Redis pipeline
CLICK_DELAY_S = 120.0  # mean time from a serve to its click (exponential)
RETRY_EVERY = 100  # every 100th click is sent twice (a lost answer retried): charged once


@dataclass(frozen=True)
class Market:
    bid: np.ndarray  # per campaign, CPC
    ctr: np.ndarray  # per campaign, base click-through rate
    candidates: np.ndarray  # per user category: the campaigns targeting it (categories x per_category)


@dataclass(frozen=True)
class Minute:
    """One simulated minute's auctions: candidates, pCTRs and the random draws that decide
    throttling and clicks (the same for the paced and the unpaced run)."""

    candidates: np.ndarray  # auctions x per_category, campaign index
    pctr: np.ndarray
    u_throttle: np.ndarray
    u_click: np.ndarray


def make_market(n_campaigns: int, n_categories: int, targets: int, rng: np.random.Generator, floor: float) -> Market:
    if n_campaigns % n_categories:
        raise ValueError("--campaigns must be a multiple of --categories (every category gets as many campaigns)")
    bid = np.maximum(np.round(rng.lognormal(np.log(0.5), 0.6, n_campaigns), 2), floor)  # like genrec.data.synthetic
    # advertisers bid about what a click is worth, so a campaign's expected eCPM (base CTR x bid)
    # sits in a narrow band (ECPM_SIGMA) around ECPM; the per-user pCTR spread decides auctions
    ctr = np.minimum(ECPM / bid * rng.lognormal(0.0, ECPM_SIGMA, n_campaigns), 0.3)
    # campaign c targets categories home(c) + k * step (k < targets): every category is targeted by
    # exactly targets * n_campaigns / n_categories campaigns, none twice by the same campaign
    home = rng.permutation(n_campaigns) % n_categories
    step = max(1, n_categories // targets)
    cats = (home[:, None] + step * np.arange(targets)[None, :]) % n_categories
    candidates = np.stack([np.flatnonzero((cats == g).any(axis=1)) for g in range(n_categories)])
    return Market(bid, ctr, candidates)


def traffic(auctions: int, curve: TrafficCurve, rng: np.random.Generator) -> np.ndarray:
    """Auctions per minute of the day: the curve, this day's per-hour deviation, Poisson arrivals."""
    hourly = np.asarray(curve.hourly) * rng.lognormal(-(HOUR_NOISE**2) / 2, HOUR_NOISE, 24)
    return rng.poisson(np.repeat(hourly * auctions / 60.0, 60))


def minute_draws(market: Market, n: int, seed: int, minute: int) -> Minute:
    rng = np.random.default_rng([seed, minute])
    cand = market.candidates[rng.integers(0, len(market.candidates), n)]
    pctr = np.minimum(market.ctr[cand] * rng.lognormal(-(PCTR_SIGMA**2) / 2, PCTR_SIGMA, cand.shape), 0.5)
    return Minute(cand, pctr, rng.random(cand.shape), rng.random(cand.shape))


def auction(m: Minute, bid: np.ndarray, eligible: np.ndarray, slots: int, floor: float, min_ecpm: float) -> tuple[np.ndarray, ...]:
    """The GSP auction of every auction of a minute at once (``genrec.ads.auction`` rules):
    returns the won (auction, candidate column) pairs, their prices and whether they were clicked."""
    b = bid[m.candidates]
    ecpm = m.pctr * b
    score = np.where(eligible & (b >= floor) & (ecpm >= min_ecpm), ecpm, -1.0)
    order = np.argsort(-score, axis=1, kind="stable")[:, : slots + 1]
    ranked = np.take_along_axis(score, order, axis=1)
    if ranked.shape[1] < slots + 1:
        ranked = np.pad(ranked, ((0, 0), (0, slots + 1 - ranked.shape[1])), constant_values=-1.0)
        order = np.pad(order, ((0, 0), (0, slots + 1 - order.shape[1])))
    won = ranked[:, :slots] > 0
    rows, cols = np.nonzero(won)
    col = order[rows, cols]
    nxt = ranked[rows, cols + 1]
    own_pctr, own_bid = m.pctr[rows, col], b[rows, col]
    price = np.where(nxt > 0, np.clip(nxt / own_pctr, floor, own_bid), floor)
    price = np.minimum(np.maximum(price, floor), own_bid)
    clicked = m.u_click[rows, col] < own_pctr
    return rows, col, price, clicked


def check_auction(m: Minute, market: Market, slots: int, floor: float, min_ecpm: float, n: int = 300) -> int:
    """The vectorised auction against ``genrec.ads.auction.run_auction`` on ``n`` auctions."""
    eligible = np.ones(m.candidates.shape, dtype=bool)
    rows, col, price, _ = auction(m, market.bid, eligible, slots, floor, min_ecpm)
    for a in range(min(n, len(m.candidates))):
        bids = [AdBid(int(c), int(c), float(market.bid[c]), float(p)) for c, p in zip(m.candidates[a], m.pctr[a])]
        want = [(w.campaign, round(w.price, 9)) for w in run_auction(bids, slots, floor, min_ecpm)]
        got = [(int(m.candidates[a, c]), round(float(p), 9)) for c, p in zip(col[rows == a], price[rows == a])]
        if got != want:
            raise AssertionError(f"auction {a}: vectorised {got} != run_auction {want}")
    return min(n, len(m.candidates))


def demand_pass(market: Market, per_minute: np.ndarray, seed: int, slots: int, floor: float, min_ecpm: float) -> np.ndarray:
    """Each campaign's spend over the day without budgets or pacing (numpy only)."""
    spend = np.zeros(len(market.bid))
    for minute, n in enumerate(per_minute):
        m = minute_draws(market, int(n), seed, minute)
        rows, col, price, clicked = auction(m, market.bid, np.ones(m.candidates.shape, dtype=bool), slots, floor, min_ecpm)
        np.add.at(spend, m.candidates[rows, col][clicked], price[clicked])
    return spend


async def simulate(
    url: str, mode: str, market: Market, budgets: np.ndarray, per_minute: np.ndarray, seed: int, a: argparse.Namespace, cfg: AdsConfig
) -> dict:
    """One day through Redis. ``mode``: "paced" or "unpaced" (own key prefix each)."""
    pacing = PacingController.from_config(cfg) if mode == "paced" else None
    state = AdState(url, 10.0, prefix=f"sim-{mode}", pacing=pacing, ttl_s=cfg.state_ttl_s)
    n = len(budgets)
    campaigns = list(range(n))
    budget_map = {c: float(budgets[c]) for c in campaigns}
    t0, started = day_start(DAY), time.perf_counter()
    out_minute = np.full(n, -1)
    probabilities = np.zeros((24, n))
    outcomes = {"charged": 0, "duplicate": 0, "exhausted": 0}
    pending: dict[int, list[Click]] = {}  # charge minute -> clicks (clicks come a while after the serve)
    clicks_total = retries = 0
    charged = np.zeros(n, dtype=np.int64)  # charged clicks per campaign

    async def charge(minute: int) -> None:
        due = pending.pop(minute, [])
        for i in range(0, len(due), CHARGE_BATCH):
            batch = due[i : i + CHARGE_BATCH]
            for k, o in zip(batch, await state.charge_clicks(batch, DAY, t0 + 60.0 * minute + 30.0)):
                outcomes[o] += 1
                charged[k.campaign] += o == "charged"

    try:
        for minute, count in enumerate(per_minute):
            now = t0 + 60.0 * minute
            snap = await state.snapshot("sim", campaigns, DAY, now, budget_map)
            spend = np.array([snap.spend[c] for c in campaigns])
            p = np.array([snap.serve_probability[c] for c in campaigns])
            probabilities[minute // 60] += p / 60.0
            out_minute[(out_minute < 0) & (spend >= budgets)] = minute
            m = minute_draws(market, int(count), seed, minute)
            eligible = (spend < budgets)[m.candidates] & (m.u_throttle < p[m.candidates])
            rows, col, price, clicked = auction(m, market.bid, eligible, a.slots, cfg.floor_cpc, cfg.min_ecpm)
            rows, col, price = rows[clicked], col[clicked], price[clicked]
            # given a click (u_click < pCTR), u_click / pCTR is a fresh uniform draw: the click's delay
            delay = (-CLICK_DELAY_S * np.log(np.maximum(m.u_click[rows, col] / m.pctr[rows, col], 1e-12)) // 60).astype(int)
            for i, (c, x, d) in enumerate(zip(m.candidates[rows, col], price, delay)):
                click = Click(int(c), f"{minute}-{i}", float(x), float(budgets[c]))
                pending.setdefault(minute + int(d), []).append(click)
                if i % RETRY_EVERY == 0:  # a client that lost the answer sends the click again
                    pending.setdefault(minute + int(d) + 1, []).append(click)
                    retries += 1
            clicks_total += len(price)
            await charge(minute)
            if minute % 60 == 59:
                spent = float(spend.sum() / budgets.sum())
                print(
                    f"  [{mode}] {minute // 60:02d}:59  spent {spent:6.1%} of all budgets  mean p {p.mean():.2f}  "
                    f"out of budget {int((out_minute >= 0).sum()):4d}/{n}  clicks {clicks_total:8d}  {time.perf_counter() - started:5.1f} s",
                    flush=True,
                )
        for minute in sorted(pending):  # clicks after midnight on the day's ads: charged to the day they were served
            await charge(minute)
        hourly = await state.hourly_spend(campaigns, DAY)
    finally:
        await state.close()
    return {
        "hourly": np.array([hourly[c] for c in campaigns]),  # campaigns x 24
        "out_minute": out_minute,
        "mean_p": probabilities,
        "outcomes": outcomes,
        "clicks": clicks_total,
        "retries": retries,
        "charged": charged,
        "seconds": time.perf_counter() - started,
    }


def within(actual: np.ndarray, target: np.ndarray, tol: float) -> np.ndarray:
    return np.abs(actual - target) <= tol * target


def summarise(budgets: np.ndarray, bids: np.ndarray, curve: TrafficCurve, paced: dict, unpaced: dict, tol: float) -> dict:
    target_h = budgets[:, None] * np.asarray(curve.hourly)[None, :]
    cum_target = np.cumsum(target_h, axis=1)
    out: dict = {}
    for name, run in (("paced", paced), ("unpaced", unpaced)):
        h = run["hourly"]
        total = h.sum(axis=1)
        out[name] = {
            "campaign_hours_within_20pct": float(within(h, target_h, tol).mean()),
            "campaign_hours_within_20pct_cumulative": float(within(np.cumsum(h, axis=1), cum_target, tol).mean()),
            "campaigns_spending_95pct": float((total >= 0.95 * budgets).mean()),
            "min_budget_share_spent": float((total / budgets).min()),
            "median_budget_share_spent": float(np.median(total / budgets)),
            "max_overspend_over_budget": float((total - budgets).max()),
            "overspend_within_one_click": bool((total - budgets <= bids + 1e-6).all()),
            "charged_clicks_per_campaign": {
                "min": int(run["charged"].min()),
                "p10": float(np.percentile(run["charged"], 10)),
                "median": float(np.median(run["charged"])),
            },
            "campaigns_out_of_budget": int((run["out_minute"] >= 0).sum()),
            "clicks": int(run["clicks"]),
            "clicks_retried": int(run["retries"]),
            "charge_outcomes": run["outcomes"],
            "seconds": round(run["seconds"], 1),
        }
    for name, run in (("paced", paced), ("unpaced", unpaced)):
        out_h = run["out_minute"][run["out_minute"] >= 0] / 60.0
        out[name]["out_of_budget_hour"] = (
            {"p10": float(np.percentile(out_h, 10)), "median": float(np.median(out_h)), "p90": float(np.percentile(out_h, 90))}
            if out_h.size
            else None
        )
    return out


def plot(path: Path, budgets: np.ndarray, curve: TrafficCurve, paced: dict, unpaced: dict, picks: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.arange(25) - 0.5
    fig, axes = plt.subplots(2, len(picks), figsize=(4.2 * len(picks), 6.4), sharex=True, squeeze=False)
    for j, c in enumerate(picks):
        target = budgets[c] * np.asarray(curve.hourly)
        for i, (name, run) in enumerate((("paced", paced), ("unpaced", unpaced))):
            ax = axes[i, j]
            ax.bar(np.arange(24), run["hourly"][c], color="tab:blue" if i == 0 else "tab:orange", alpha=0.75, label=f"{name} spend")
            ax.stairs(1.2 * target, edges, baseline=0.8 * target, fill=True, color="grey", alpha=0.25, label="target +-20 %")
            ax.stairs(target, edges, color="black", label="target")
            title = f"campaign {c}, budget {budgets[c]:.0f}: {name}, {run['hourly'][c].sum() / budgets[c]:.0%} spent"
            if run["out_minute"][c] >= 0:
                title += f", out at {run['out_minute'][c] / 60:.1f} h"
            ax.set_title(title, fontsize=8)
            if i == 1:
                ax.set_xlabel("hour (UTC)")
            if j == 0:
                ax.set_ylabel("spend per hour")
            if i == 0 and j == 0:
                ax.legend(fontsize=8)
    fig.suptitle("Hourly spend vs the target curve (budget x share of the day's expected traffic)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.ads_pacing", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--campaigns", type=int, default=200, help="a multiple of --categories")
    p.add_argument("--categories", type=int, default=25, help="user categories; each campaign targets 3")
    p.add_argument("--auctions", type=int, default=2_000_000, help="auctions (feed pages with ads) over the day")
    p.add_argument("--slots", type=int, default=3, help="ad slots per auction")
    p.add_argument("--budget-share", type=float, nargs=2, default=(0.35, 0.65), help="budget = U(lo, hi) x the campaign's demand")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tolerance", type=float, default=0.20)
    p.add_argument("--horizon-s", type=int, default=None, help="pacing horizon (default: AdsConfig.pacing_horizon_s)")
    p.add_argument("--smoothing-s", type=int, default=None, help="demand EMA time constant (default: AdsConfig.pacing_smoothing_s)")
    p.add_argument("--out", type=Path, default=OUT, help="folder for ads_pacing.json and ads_pacing.png")
    a = p.parse_args(argv)
    started, load = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    cfg = AdsConfig()
    cfg = replace(cfg, pacing_horizon_s=a.horizon_s or cfg.pacing_horizon_s, pacing_smoothing_s=a.smoothing_s or cfg.pacing_smoothing_s)
    curve = TrafficCurve(DIURNAL)
    rng = np.random.default_rng(a.seed)
    market = make_market(a.campaigns, a.categories, 3, rng, cfg.floor_cpc)
    per_minute = traffic(a.auctions, curve, rng)
    checked = check_auction(minute_draws(market, int(per_minute[0]), a.seed, 0), market, a.slots, cfg.floor_cpc, cfg.min_ecpm)
    print(
        f"[ads-pacing] {a.campaigns} campaigns, {int(per_minute.sum())} auctions x {a.slots} slots; auction checked on {checked}",
        flush=True,
    )
    t = time.perf_counter()
    demand = demand_pass(market, per_minute, a.seed, a.slots, cfg.floor_cpc, cfg.min_ecpm)
    budgets = np.round(demand * rng.uniform(a.budget_share[0], a.budget_share[1], a.campaigns), 2)
    print(f"[ads-pacing] demand pass {time.perf_counter() - t:.1f} s: demand {demand.sum():.0f}, budgets {budgets.sum():.0f}", flush=True)
    if (budgets <= 0).any():
        raise SystemExit("a campaign has no demand: raise --auctions or lower --campaigns")
    server = RedisServer(maxmemory="1gb").start()
    try:
        runs = {mode: asyncio.run(simulate(server.url, mode, market, budgets, per_minute, a.seed, a, cfg)) for mode in ("unpaced", "paced")}
    finally:
        server.stop()
    summary = summarise(budgets, market.bid, curve, runs["paced"], runs["unpaced"], a.tolerance)
    order = np.argsort(budgets)
    picks = [int(order[len(order) // 10]), int(order[len(order) // 2]), int(order[-1 - len(order) // 10])]
    target_h = budgets[:, None] * np.asarray(curve.hourly)[None, :]
    result = {
        "what": "one simulated day of GSP ad auctions against a real redis-server; spend per campaign and hour, paced vs unpaced",
        "goal": "paced: >= 90 % of campaign-hours within +-20 % of the target curve, each budget >= 95 % spent; unpaced: out early",
        "settings": {
            "campaigns": a.campaigns,
            "categories": a.categories,
            "auctions": int(per_minute.sum()),
            "slots": a.slots,
            "budget_share_of_demand": list(a.budget_share),
            "seed": a.seed,
            "tolerance": a.tolerance,
            "traffic_curve": list(curve.hourly),
            "pacing": {
                "interval_s": cfg.pacing_interval_s,
                "horizon_s": cfg.pacing_horizon_s,
                "smoothing_s": cfg.pacing_smoothing_s,
                "p_min": cfg.pacing_p_min,
            },
            "floor_cpc": cfg.floor_cpc,
            "min_ecpm": cfg.min_ecpm,
            "day": DAY,
        },
        "summary": summary,
        "wall_s": round(time.perf_counter() - started, 1),
        "load_average_at_start": load,
        "plotted_campaigns": picks,
        "campaigns": [
            {
                "campaign": c,
                "bid": float(market.bid[c]),
                "base_ctr": round(float(market.ctr[c]), 5),
                "demand": round(float(demand[c]), 2),
                "budget": float(budgets[c]),
                "target_hourly": [round(float(x), 3) for x in target_h[c]],
                "paced_hourly": [round(float(x), 3) for x in runs["paced"]["hourly"][c]],
                "unpaced_hourly": [round(float(x), 3) for x in runs["unpaced"]["hourly"][c]],
                "paced_mean_p_hourly": [round(float(x), 4) for x in runs["paced"]["mean_p"][:, c]],
                "unpaced_out_of_budget_hour": None
                if runs["unpaced"]["out_minute"][c] < 0
                else round(runs["unpaced"]["out_minute"][c] / 60.0, 2),
            }
            for c in range(a.campaigns)
        ],
        "method": __doc__.split("\n\n", 2)[2].strip() if __doc__ else "",
        "created": now_iso(),
        "versions": versions(),
        "machine": machine(),
    }
    a.out.mkdir(parents=True, exist_ok=True)
    write_json(a.out / "ads_pacing.json", result)
    plot(a.out / "ads_pacing.png", budgets, curve, runs["paced"], runs["unpaced"], picks)
    print_table(summary, a.tolerance)
    print(f"[ads-pacing] wrote {a.out / 'ads_pacing.json'} and {a.out / 'ads_pacing.png'}")
    return 0


def print_table(summary: dict, tol: float) -> None:
    rows = [
        (f"campaign-hours within +-{tol:.0%} (hourly)", "campaign_hours_within_20pct", "{:.1%}"),
        (f"campaign-hours within +-{tol:.0%} (cumulative)", "campaign_hours_within_20pct_cumulative", "{:.1%}"),
        ("campaigns spending >= 95 % of budget", "campaigns_spending_95pct", "{:.1%}"),
        ("least budget share spent", "min_budget_share_spent", "{:.1%}"),
        ("max overspend (currency)", "max_overspend_over_budget", "{:.3f}"),
        ("overspend within one click's price", "overspend_within_one_click", "{}"),
        ("campaigns out of budget", "campaigns_out_of_budget", "{}"),
        ("clicks on served ads", "clicks", "{}"),
        ("  of them sent twice (retried)", "clicks_retried", "{}"),
    ]
    print(f"\n{'':44s} {'paced':>10s} {'unpaced':>10s}")
    for label, key, fmt in rows:
        print(f"{label:44s} {fmt.format(summary['paced'][key]):>10s} {fmt.format(summary['unpaced'][key]):>10s}")
    for outcome in ("charged", "duplicate", "exhausted"):
        paced, unpaced = summary["paced"]["charge_outcomes"][outcome], summary["unpaced"]["charge_outcomes"][outcome]
        print(f"{'charge answers: ' + outcome:44s} {paced:>10d} {unpaced:>10d}")
    clicks = summary["paced"]["charged_clicks_per_campaign"]
    print(f"paced: charged clicks per campaign min {clicks['min']}, p10 {clicks['p10']:.0f}, median {clicks['median']:.0f}")
    for mode in ("paced", "unpaced"):
        out = summary[mode]["out_of_budget_hour"]
        if out:
            print(f"{mode}: out of budget at hour p10 {out['p10']:.1f}, median {out['median']:.1f}, p90 {out['p90']:.1f}")


if __name__ == "__main__":
    sys.exit(main())
