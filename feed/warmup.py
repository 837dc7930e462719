"""Deploy warm-up: build a new ``recommend`` version's encoder states before traffic moves to it.

A new version starts with an empty encoder-state cache (its stub is new, and states built by
other weights are not its own), so without this every active user's first request after a
deploy pays a cold encode of its whole history at once. ``warm_version`` takes the most
recently active users (the feed's recently-active index), reads each one's stored history and
calls ``recommend`` on the new version, named explicitly, so the version's cache holds the
states before the router (``canary.VersionRouter``) lets users onto it.

Bounded so serving is not starved: calls start at most ``rate_per_s`` a second (a pacer over a
shared schedule), ``concurrency`` at a time, and no call starts once ``budget_s`` has passed
since the start. A user with no history has nothing to warm; a failed call is counted and the
warm-up goes on. Plain logic over three callables, so unit tests drive it with fakes and a
fake clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from genrec.feed.ports import UserState

UserOutcome = Literal["warmed", "failed", "skipped"]  # skipped: no history, nothing to encode
RunOutcome = Literal["done", "budget", "no_users", "error"]


@dataclass(frozen=True)
class WarmupPlan:
    users: int  # the most recently active users to warm
    rate_per_s: float  # recommend calls started per second, at most
    budget_s: float  # no call starts after this long
    concurrency: int = 1  # calls in flight at once


@dataclass
class WarmupReport:
    version: str
    outcome: RunOutcome = "done"
    asked: int = 0  # users taken from the index
    warmed: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    error: str = ""


class Pacer:
    """Start times ``1 / rate`` apart, shared by every worker: ``wait`` returns when the caller
    may start its call (a late caller does not earn a burst: the schedule restarts from now)."""

    def __init__(self, rate_per_s: float, clock: Callable[[], float], sleep: Callable[[float], Awaitable[None]]) -> None:
        self.interval = 1.0 / rate_per_s
        self.clock, self.sleep = clock, sleep
        self._next = clock()

    async def wait(self) -> None:
        now = self.clock()
        start = max(self._next, now)
        self._next = start + self.interval  # reserved before sleeping, so workers interleave
        if start > now:
            await self.sleep(start - now)


async def warm_version(
    version: str,
    plan: WarmupPlan,
    active_users: Callable[[int], Awaitable[list[str]]],
    user_state: Callable[[str], Awaitable[UserState]],
    encode: Callable[[str, UserState, str], Awaitable[None]],
    observe: Callable[[UserOutcome], None] = lambda outcome: None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> WarmupReport:
    """Warm ``version`` for up to ``plan.users`` recently active users. ``encode(user, state,
    version)`` is one recommend call on that version (raises on failure); ``observe`` is told
    each user's outcome as it happens (the metrics)."""
    t0 = clock()
    report = WarmupReport(version)
    try:
        users = await active_users(plan.users)
    except Exception as e:  # the index unreadable: nothing to warm, the version is released
        report.outcome, report.error = "error", f"{type(e).__name__}: {e}"[:300]
        report.seconds = clock() - t0
        return report
    report.asked = len(users)
    if not users:
        report.outcome = "no_users"
        return report
    pending = iter(users)
    pacer = Pacer(plan.rate_per_s, clock, sleep)

    def count(outcome: UserOutcome) -> None:
        setattr(report, outcome, getattr(report, outcome) + 1)
        observe(outcome)

    async def worker() -> None:
        for user in pending:  # one shared iterator: each user is taken once
            if clock() - t0 >= plan.budget_s:
                report.outcome = "budget"
                return
            try:
                state = await user_state(user)
                if len(state.history) == 0:
                    count("skipped")
                    continue
                await pacer.wait()
                if clock() - t0 >= plan.budget_s:
                    report.outcome = "budget"
                    return
                await encode(user, state, version)
                count("warmed")
            except Exception:  # one user's failure (Redis, Triton) does not stop the others
                count("failed")

    await asyncio.gather(*(worker() for _ in range(max(1, plan.concurrency))))
    report.seconds = clock() - t0
    return report
