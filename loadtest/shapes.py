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
