"""One line per request a load run sent (JSON Lines), for analyses locust's own statistics cannot
make: latency and errors against time around an injected fault, fallback answers of the feed.

Each line: ``{"t": end time (unix s), "name", "ms", "ok", "fallback", "error"}``. ``fallback`` is
true for a ``/v1/feed`` answer served without the model (``fallback``) or with a part missing
(``degraded``, e.g. Redis or ads unavailable): the app saw a feed, but not the full one.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO


@dataclass(frozen=True)
class LoggedRequest:
    t: float
    name: str
    ms: float
    ok: bool
    fallback: bool = False
    error: str = ""


def feed_fallback(response: Any) -> bool:
    """True when a feed answer says it was served without the model or with a part missing."""
    try:
        data = response.json().get("data") or {}
    except Exception:
        return False
    return bool(data.get("fallback")) or bool(data.get("degraded"))


class RequestLog:
    """Appends requests to a file; thread- and greenlet-safe, flushed at most every second."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._out: TextIO = open(self.path, "a", buffering=1 << 16)
        self._lock = threading.Lock()
        self._flushed = time.monotonic()

    def write(self, r: LoggedRequest) -> None:
        line = json.dumps(
            {"t": round(r.t, 4), "name": r.name, "ms": round(r.ms, 2), "ok": r.ok, "fallback": r.fallback, "error": r.error[:200]}
        )
        with self._lock:
            self._out.write(line + "\n")
            if time.monotonic() - self._flushed > 1.0:
                self._out.flush()
                self._flushed = time.monotonic()

    def close(self) -> None:
        with self._lock:
            self._out.close()


def read(path: str | Path) -> Iterator[LoggedRequest]:
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                d = json.loads(line)
            except ValueError:  # a line cut by a killed generator
                continue
            yield LoggedRequest(
                float(d["t"]), str(d["name"]), float(d["ms"]), bool(d["ok"]), bool(d.get("fallback")), str(d.get("error", ""))
            )
