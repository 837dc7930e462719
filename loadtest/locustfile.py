"""Locust scenarios: feed users over HTTP and a gRPC user for Triton's ``recommend``.

    locust -f loadtest/locustfile.py --headless -u 4 -r 4 -t 30s RecommendUser \
        --triton-grpc localhost:8001 --workload build/loadtest/workload.json --rate 8
    locust -f loadtest/locustfile.py --host http://localhost:3000 FeedUser ...   # web UI on :8089

Users come from a workload file (``python -m loadtest prepare`` or ``python -m loadtest run``
builds it from a trained run): the run's users with their real histories, drawn Zipf. With
``--rate R`` each user paces itself so the users together run R tasks/s (one request each) at
the base user count; without it, users think 1-3 s between actions. ``--shape`` picks the
load shape (constant, step, spike). At the end the gate (``gate.py``) judges P99 per gated
request, the failure ratio and the generator's own CPU, writes ``--summary-json`` and sets the
exit code (0 pass, 1 fail).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
from locust import FastHttpUser, LoadTestShape, User, between, events, task
from locust.runners import WorkerRunner

# gRPC's C core must cooperate with gevent (locust patched the standard library on import):
# this has to run before any channel exists.
import grpc.experimental.gevent as grpc_gevent  # isort: skip

grpc_gevent.init_gevent()

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: `loadtest` and the client
from genrec.client import ClientError, RecommendClient, RetryPolicy  # noqa: E402
from loadtest import gate  # noqa: E402
from loadtest.request_log import LoggedRequest, RequestLog, feed_fallback  # noqa: E402
from loadtest.shapes import SHAPES, expected_rate, users_at  # noqa: E402
from loadtest.workload import Workload  # noqa: E402

REQUEST_OF_USER = {"RecommendUser": "recommend", "FeedUser": "/v1/feed"}  # the request each user class is gated on
_shared: dict[str, Any] = {}


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    g = parser.add_argument_group("genrec")
    g.add_argument("--workload", env_var="LOCUST_WORKLOAD", default="", help="workload JSON (python -m loadtest prepare)")
    g.add_argument("--triton-grpc", env_var="LOCUST_TRITON_GRPC", default="localhost:8001", help="Triton gRPC host:port")
    g.add_argument("--rate", type=float, env_var="LOCUST_RATE", default=0.0, help="tasks/s of all users at the base count (0: think times)")
    g.add_argument("--shape", choices=SHAPES, env_var="LOCUST_SHAPE", default="constant")
    g.add_argument("--steps", type=int, env_var="LOCUST_STEPS", default=4, help="step shape: number of equal steps up to -u")
    g.add_argument(
        "--spike-factor", type=float, env_var="LOCUST_SPIKE_FACTOR", default=3.0, help="spike shape: users x this in the middle third"
    )
    g.add_argument("--zipf", type=float, env_var="LOCUST_ZIPF", default=1.1, help="Zipf exponent over the workload's users")
    g.add_argument("--request-timeout", type=float, env_var="LOCUST_REQUEST_TIMEOUT", default=2.0, help="seconds per request")
    g.add_argument("--recommend-p99-ms", type=float, env_var="LOCUST_RECOMMEND_P99_MS", default=gate.DEFAULT_P99_MS["recommend"])
    g.add_argument("--feed-p99-ms", type=float, env_var="LOCUST_FEED_P99_MS", default=gate.DEFAULT_P99_MS["/v1/feed"])
    g.add_argument("--max-fail-ratio", type=float, env_var="LOCUST_MAX_FAIL_RATIO", default=gate.DEFAULT_MAX_FAIL_RATIO)
    g.add_argument("--max-generator-cpu", type=float, env_var="LOCUST_MAX_GENERATOR_CPU", default=gate.DEFAULT_MAX_GENERATOR_CPU)
    g.add_argument("--min-rate-ratio", type=float, env_var="LOCUST_MIN_RATE_RATIO", default=gate.DEFAULT_MIN_RATE_RATIO)
    g.add_argument("--summary-json", env_var="LOCUST_SUMMARY_JSON", default="", help="write the gate's summary here")
    g.add_argument(
        "--request-log", env_var="LOCUST_REQUEST_LOG", default="", help="append one JSON line per request here (loadtest/request_log.py)"
    )


def _workload(options: Any) -> Workload:
    if "workload" not in _shared:
        if not options.workload:
            raise RuntimeError("--workload is required (python -m loadtest prepare --run DIR writes one)")
        _shared["workload"] = Workload.load(options.workload, options.zipf)
    return _shared["workload"]


def _paced(user: Any, think: Any) -> float:
    """Poisson arrivals at ``--rate`` across the users: each user's next start is an exponential
    gap after its previous one. Users paced with ``constant_throughput`` stay in lockstep from a
    common start and hit a one-instance server in bursts (measured at 8 req/s: 20 ms mean queue
    time for 13.5 ms of compute), which is the generator's artefact, not the traffic's."""
    o = user.environment.parsed_options
    if o.rate <= 0:
        return think(user)
    per_user = o.rate / max(1, o.num_users or 1)
    now = time.monotonic()
    previous = getattr(user, "_next_start", None)
    if previous is None:
        start = now + random.uniform(0.0, 1.0 / per_user)  # spread the users out once
    else:  # never build a backlog: after a slow call the next gap counts from about now
        start = max(previous, now - 1.0 / per_user) + random.expovariate(per_user)
    user._next_start = start
    return max(0.0, start - now)


def _now() -> float:
    return float(int(time.time()))  # whole seconds, as the served histories hold them


class RecommendUser(User):
    """A backend calling Triton's ``recommend`` over gRPC with a user's real history (one shared
    channel per process, no client retries: a failure is counted, not hidden)."""

    _think = between(0.5, 2.0)

    def wait_time(self) -> float:
        return _paced(self, RecommendUser._think)

    def on_start(self) -> None:
        o = self.environment.parsed_options
        if "recommend" not in _shared:
            _shared["recommend"] = RecommendClient(o.triton_grpc, "grpc", timeout_s=o.request_timeout, retry=RetryPolicy.none())
        self.triton = _shared["recommend"]
        self.work = _workload(o)
        self.rng = random.Random()

    @task
    def recommend(self) -> None:
        u = self.work.draw(self.rng)
        t0, n, exc = time.perf_counter(), 0, None
        try:
            r = self.triton.recommend(
                u["items"],
                u["actions"],
                u["timestamps"],
                u["devices"],
                user_id=f"lt-{u['user_id']}",
                segment=u["segment"],
                request_time=u["timestamps"][-1] + 60.0,
            )
            n = len(r.items)
        except ClientError as e:
            exc = RuntimeError(f"[{e.code}] {e.message}")  # without the request id, so locust groups equal errors
        self.environment.events.request.fire(
            request_type="grpc",
            name="recommend",
            response_time=(time.perf_counter() - t0) * 1000.0,
            response_length=n,
            exception=exc,
            context={"user": u["user_id"]},
        )


class FeedUser(FastHttpUser):
    """An app user scrolling the feed: pages with cursors (up to 3 per session), impressions for
    what was shown, some clicks and likes, item pages and similar items; Zipf over the users."""

    _think = between(1.0, 3.0)
    MAX_PAGES = 3

    def wait_time(self) -> float:
        return _paced(self, FeedUser._think)

    def on_start(self) -> None:
        self.work = _workload(self.environment.parsed_options)
        self.rng = random.Random()
        self._new_session()

    def _new_session(self) -> None:
        self.user_id = self.work.draw(self.rng)["user_id"]
        self.cursor: str | None = None
        self.pages = 0
        self.shown: list[dict[str, Any]] = []

    def _envelope(self, resp: Any) -> dict[str, Any] | None:
        try:
            body = resp.json()
        except Exception:
            body = None
        if resp.status_code != 200 or not isinstance(body, dict) or body.get("code") != 0:
            msg = body.get("msg") if isinstance(body, dict) else (resp.text or "")[:200]
            code = body.get("code") if isinstance(body, dict) else None
            resp.failure(f"HTTP {resp.status_code} code {code}: {msg}")
            return None
        return body["data"]

    @task(4)
    def feed_page(self) -> None:
        if self.pages >= self.MAX_PAGES or (self.pages and self.cursor is None) or self.rng.random() < 0.15:
            self._new_session()
        body: dict[str, Any] = {"user_id": self.user_id, "count": 10}
        if self.cursor:
            body["cursor"] = self.cursor
        with self.client.post("/v1/feed", json=body, name="/v1/feed", catch_response=True) as resp:
            data = self._envelope(resp)
            if data is not None:
                self.cursor, self.pages = data.get("next_cursor"), self.pages + 1
                self.shown = data.get("items", [])

    @task(3)
    def events(self) -> None:
        if not self.shown:
            return self.feed_page()
        now = _now()
        batch = [self._event(it, "impression", now) for it in self.shown]
        r = self.rng.random()
        if r < 0.3:
            batch.append(self._event(self.rng.choice(self.shown), "click", now))
        if r < 0.1:
            batch.append(self._event(self.rng.choice(self.shown), "like", now))
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        with self.client.post(
            "/v1/events", json={"user_id": self.user_id, "events": batch}, headers=headers, name="/v1/events", catch_response=True
        ) as resp:
            self._envelope(resp)
        self.shown = []

    @staticmethod
    def _event(item: dict[str, Any], kind: str, now: float) -> dict[str, Any]:
        return {"type": kind, "item_id": item["id"], "event_token": item["tracking"]["event_token"], "timestamp": now}

    @task(1)
    def item_page(self) -> None:
        item = self.rng.choice(self.shown)["id"] if self.shown else self.rng.randrange(self.work.n_items)
        with self.client.get(f"/v1/items/{item}", name="/v1/items/{id}", catch_response=True) as resp:
            if resp.status_code == 404:  # a random id may be an ad or unknown: not a failure of the service
                resp.success()
            else:
                self._envelope(resp)

    @task(1)
    def similar(self) -> None:
        organic = [it for it in self.shown if it.get("type") != "ad"]  # an ad has no similar items (404)
        if not organic:
            return self.feed_page()
        item = self.rng.choice(organic)["id"]
        with self.client.get(
            f"/v1/items/{item}/similar?k=10&user_id={self.user_id}", name="/v1/items/{id}/similar", catch_response=True
        ) as resp:
            self._envelope(resp)


class GenrecShape(LoadTestShape):
    """constant: -u users for -t; step: -u reached in --steps equal steps; spike: -u users, then
    --spike-factor times as many in the middle third of -t, then back."""

    use_common_options = True

    def tick(self) -> tuple[int, float] | None:
        o = self.runner.environment.parsed_options
        users = max(1, o.num_users or 1)
        return users_at(o.shape, self.get_run_time(), users, float(o.spawn_rate or users), o.run_time, o.steps, o.spike_factor)


_cpu: dict[str, float] = {}


@events.test_start.add_listener
def _open_request_log(environment: Any, **_: Any) -> None:
    o = environment.parsed_options
    if o is None or not o.request_log or type(environment.runner).__name__ == "MasterRunner":
        return  # a master sends no requests; each worker writes a file of its own (no interleaved lines)
    log = RequestLog(o.request_log + (f".{os.getpid()}" if isinstance(environment.runner, WorkerRunner) else ""))
    _shared["request_log"] = log

    def record(name: str, response_time: float, exception: Any = None, response: Any = None, **_: Any) -> None:
        fallback = exception is None and name == "/v1/feed" and response is not None and feed_fallback(response)
        log.write(
            LoggedRequest(time.time(), name, float(response_time), exception is None, fallback, "" if exception is None else str(exception))
        )

    environment.events.request.add_listener(record)


@events.quitting.add_listener
def _close_request_log(environment: Any, **_: Any) -> None:
    log = _shared.pop("request_log", None)
    if log is not None:
        log.close()


@events.test_start.add_listener
def _measure_start(environment: Any, **_: Any) -> None:
    t = psutil.Process().cpu_times()
    _cpu.update(wall=time.monotonic(), cpu=t.user + t.system)


@events.test_stop.add_listener
def _measure_stop(environment: Any, **_: Any) -> None:
    if "wall" in _cpu:
        t = psutil.Process().cpu_times()
        _cpu["duration"] = time.monotonic() - _cpu["wall"]
        _cpu["share"] = (t.user + t.system - _cpu["cpu"]) / max(1e-6, _cpu["duration"])


@events.quitting.add_listener
def _gate(environment: Any, **_: Any) -> None:
    runner = environment.runner
    if isinstance(runner, WorkerRunner) or environment.parsed_options is None:
        return
    o = environment.parsed_options
    duration = _cpu.get("duration") or max(1e-6, environment.stats.total.last_request_timestamp - environment.stats.total.start_time)
    endpoints = [
        gate.Endpoint(
            e.name,
            e.num_requests,
            e.num_failures,
            e.get_response_time_percentile(0.5) or 0.0,
            e.get_response_time_percentile(0.95) or 0.0,
            e.get_response_time_percentile(0.99) or 0.0,
            e.max_response_time or 0.0,
            e.num_requests / duration,
        )
        for e in sorted(environment.stats.entries.values(), key=lambda e: e.name)
    ]
    gated = [REQUEST_OF_USER[u.__name__] for u in environment.user_classes if u.__name__ in REQUEST_OF_USER]
    thresholds = gate.Thresholds(
        {"recommend": o.recommend_p99_ms, "/v1/feed": o.feed_p99_ms}, o.max_fail_ratio, o.max_generator_cpu, o.min_rate_ratio
    )
    distributed = runner is not None and type(runner).__name__ == "MasterRunner"
    verdict = gate.judge(
        endpoints,
        gated,
        environment.stats.total.num_requests,
        environment.stats.total.num_failures,
        thresholds,
        duration,
        # the mean rate the shape asked for over the run (step and spike vary it with the users)
        target_rps=expected_rate(o.shape, o.rate, o.num_users or 1, o.run_time or duration, o.run_time, o.steps, o.spike_factor)
        if o.rate > 0
        else None,
        generator_cpu=None if distributed else _cpu.get("share"),  # a master sends no load: its workers report the warning
        generator_cpu_warning=bool(getattr(runner, "cpu_warning_emitted", False) or getattr(runner, "worker_cpu_warning_emitted", False)),
    )
    summary = {
        **verdict.as_dict(),
        "shape": o.shape,
        "users": o.num_users,
        "rate": o.rate,
        "duration_s": round(duration, 2),
        "user_classes": [u.__name__ for u in environment.user_classes],
        "errors": [{"name": e.name, "error": str(e.error), "count": e.occurrences} for e in environment.stats.errors.values()][:20],
    }
    if o.summary_json:
        Path(o.summary_json).parent.mkdir(parents=True, exist_ok=True)
        Path(o.summary_json).write_text(json.dumps(summary, indent=2))
    print(gate.describe(verdict), file=sys.stderr, flush=True)
    environment.process_exit_code = 0 if verdict.passed else 1
