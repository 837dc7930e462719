"""Leave-last-out split per user.

For each user with events e_0..e_{n-1}:
- test: target e_{n-1}, history e_0..e_{n-2};
- validation: target e_{n-2}, history e_0..e_{n-3} (used to fit the pre-rank weight and the ranker);
- training: targets and histories drawn from e_0..e_{n-3} only, so neither held-out item is seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from genrec.data.schema import Events

MIN_EVENTS = 3  # a user needs a training event, a validation target and a test target


@dataclass(frozen=True)
class Split:
    offsets: np.ndarray  # user offsets into the full event log
    eligible_users: np.ndarray  # users with at least MIN_EVENTS events
    train_end: np.ndarray  # (n_users,) exclusive end of each user's training events

    def test_target(self, events: Events, user: int) -> tuple[int, int]:
        """(history end, target index) for the test target."""
        end = int(self.offsets[user + 1])
        return end - 1, end - 1

    def validation_target(self, events: Events, user: int) -> tuple[int, int]:
        end = int(self.offsets[user + 1])
        return end - 2, end - 2

    def train_events(self, events: Events) -> Events:
        idx = np.arange(len(events))
        return events.subset(idx < self.train_end[events.user])


def leave_last_out(events: Events) -> Split:
    offsets = events.user_offsets()
    counts = np.diff(offsets)
    eligible = np.flatnonzero(counts >= MIN_EVENTS)
    train_end = np.where(counts >= MIN_EVENTS, offsets[1:] - 2, offsets[:-1])
    return Split(offsets=offsets, eligible_users=eligible, train_end=train_end.astype(np.int64))
