"""The load shapes as a pure function of time (the locustfile's ``GenrecShape`` calls it; no
locust import here, so it is tested without patching the test process with gevent)."""

from __future__ import annotations

SHAPES = ("constant", "step", "spike")


def users_at(shape: str, t: float, users: int, spawn_rate: float, run_time: float | None, steps: int = 4, spike_factor: float = 3.0):
    """(users, spawn rate) at ``t`` seconds into the run, or None when the run is over.

    constant: ``users`` throughout; step: ``users`` reached in ``steps`` equal steps over the run
    (30 s each when there is no run time); spike: ``users``, then ``spike_factor`` times as many
    during the middle third of the run, then back."""
    users = max(1, users)
    if run_time and t >= run_time:
        return None
    if shape == "step":
        step_s = run_time / max(1, steps) if run_time else 30.0
        k = min(steps, int(t // step_s) + 1)
        return max(1, round(users * k / steps)), spawn_rate
    if shape == "spike" and run_time and run_time / 3 <= t < 2 * run_time / 3:
        peak = max(users + 1, round(users * spike_factor))
        return peak, float(peak)
    return users, spawn_rate


def mean_users(
    shape: str, users: int, horizon_s: float, run_time: float | None, steps: int = 4, spike_factor: float = 3.0, samples: int = 2000
) -> float:
    """The shape's user count averaged over the first ``horizon_s`` seconds (the run time, or how
    long the run lasted): with each user paced at ``rate / users``, the rate the shape asks for
    on average is ``rate * mean_users(...) / users``. Ramp-up (the spawn rate) is not counted."""
    users = max(1, users)
    if horizon_s <= 0:
        return float(users)
    total = 0.0
    for i in range(samples):
        out = users_at(shape, (i + 0.5) * horizon_s / samples, users, 1.0, run_time, steps, spike_factor)
        total += out[0] if out else 0
    return total / samples


def expected_rate(
    shape: str, rate: float, users: int, horizon_s: float, run_time: float | None, steps: int = 4, spike_factor: float = 3.0
) -> float:
    """The mean request rate a shape expects over the run when ``rate`` is the rate at ``users``."""
    return rate * mean_users(shape, users, horizon_s, run_time, steps, spike_factor) / max(1, users)
