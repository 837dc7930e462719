"""The retry policy shared by every client: tenacity, jittered exponential backoff, and only
for failures marked retryable (see ``errors``). A server's ``Retry-After`` replaces the backoff
for that wait (capped by ``max_retry_after_s``).

``deadline_s`` is a real deadline for the whole call: no wait is started that would end past it,
and each attempt's timeout is capped at the time left (``attempt_timeout``), so an attempt that
starts 29 s into a 30 s deadline gets 1 s, not the full per-call timeout."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tenacity import (
    AsyncRetrying,
    AttemptManager,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)
from tenacity.wait import wait_base

from genrec.client.errors import ClientError


def is_retryable(e: BaseException) -> bool:
    return isinstance(e, ClientError) and e.retryable


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` calls at most (1 = no retry); waits drawn from [0, min(max_s, initial_s * 2**n)]
    ("full jitter"); ``deadline_s`` bounds the time spent across attempts and waits: a wait that
    would end past it is not started, and each attempt's timeout is capped at the time left."""

    attempts: int = 4
    initial_s: float = 0.05
    max_s: float = 2.0
    deadline_s: float | None = 30.0
    max_retry_after_s: float = 30.0
    on_retry: Callable[[RetryCallState], None] | None = None  # called before each wait (logging, tests)

    @classmethod
    def none(cls) -> RetryPolicy:
        return cls(attempts=1)

    def _kwargs(self) -> dict:
        stop: Any = stop_after_attempt(max(1, self.attempts))
        if self.deadline_s is not None:
            stop = stop | stop_before_delay(self.deadline_s)  # no sleep that would end past the deadline
        return {
            "stop": stop,
            "wait": _RetryAfterOrBackoff(self),
            "retry": retry_if_exception(is_retryable),
            "reraise": True,
            "before_sleep": self.on_retry,
        }

    def sync(self) -> Retrying:
        return Retrying(**self._kwargs())

    def asyncio(self) -> AsyncRetrying:
        return AsyncRetrying(**self._kwargs())

    def attempt_timeout(self, timeout_s: float, attempt: AttemptManager, expired: Callable[[str], ClientError]) -> float:
        """``timeout_s`` capped at the time left before ``deadline_s``, counted from the call's
        first attempt (``attempt`` is the one about to run). With no time left, raises
        ``expired(message)`` (build it non-retryable) instead of sending a request."""
        if self.deadline_s is None:
            return timeout_s
        left = self.deadline_s - (time.monotonic() - attempt.retry_state.start_time)
        if left <= 0:
            raise expired(f"deadline of {self.deadline_s:g} s spent before attempt {attempt.retry_state.attempt_number}")
        return min(timeout_s, left)


class _RetryAfterOrBackoff(wait_base):
    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.backoff = wait_random_exponential(multiplier=policy.initial_s, max=policy.max_s)

    def __call__(self, retry_state: RetryCallState) -> float:
        e = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(e, ClientError) and e.retry_after_s is not None:
            return min(max(0.0, e.retry_after_s), self.policy.max_retry_after_s)
        return float(self.backoff(retry_state))


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from datetime import datetime, timezone
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
