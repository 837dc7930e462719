"""The users a load test sends: a trained run's users with their real histories, drawn from a
Zipf distribution (a few heavy users, a long tail), as a JSON file the locust processes read.

Building it needs the run and genrec (torch); reading it needs only the standard library, so
the locust processes (gevent) stay light.
"""

from __future__ import annotations

import bisect
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FEED_USER_PREFIX = "u"  # genrec-feed-seed writes user i of the run as "u<i>"


def build(run: Path, out: Path, max_users: int = 2000, max_events: int | None = None, seed: int = 0) -> Path:
    """Write the workload of a trained run: its first ``max_users`` users (the ones the feed
    seeds), each with its history capped at the served cap (or ``max_events``)."""
    from genrec.bundle import load_bundle
    from genrec.evaluate import dataset_of

    bundle = load_bundle(run)
    ds = dataset_of(bundle)
    ev = ds.events
    offsets = ev.user_offsets()
    cap = min(bundle.cfg.pipeline.max_history_events, max_events or 10**9)
    users = []
    for u in range(min(max_users, ev.n_users)):
        a, b = int(offsets[u]), int(offsets[u + 1])
        a = max(a, b - cap)
        if b <= a:
            continue
        users.append(
            {
                "user_id": f"{FEED_USER_PREFIX}{u}",
                "segment": int(ds.users.segment[u]),
                "items": ev.item[a:b].tolist(),
                "actions": ev.action[a:b].tolist(),
                "timestamps": [float(int(t)) for t in ev.timestamp[a:b]],
                "devices": ev.device[a:b].tolist(),
            }
        )
    random.Random(seed).shuffle(users)  # Zipf rank -> user: not the data set's order
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"run": str(run), "n_items": int(bundle.catalogue().n_items), "users": users}))
    return out


@dataclass
class Workload:
    users: list[dict[str, Any]]
    n_items: int
    exponent: float = 1.1

    @classmethod
    def load(cls, path: str | Path, exponent: float = 1.1) -> Workload:
        data = json.loads(Path(path).read_text())
        if not data["users"]:
            raise ValueError(f"{path}: no users with a history")
        return cls(data["users"], int(data["n_items"]), exponent)

    def __post_init__(self) -> None:
        weights = [1.0 / (rank**self.exponent) for rank in range(1, len(self.users) + 1)]
        total, acc = sum(weights), 0.0
        self._cdf = []
        for w in weights:
            acc += w / total
            self._cdf.append(acc)

    def draw(self, rng: random.Random) -> dict[str, Any]:
        """A user, Zipf-distributed over ranks (rank 1 is the most active)."""
        i = bisect.bisect_left(self._cdf, rng.random())
        return self.users[min(i, len(self.users) - 1)]
