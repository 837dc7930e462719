"""Watchdog of a running Triton: finds a dead or stuck model instance and brings it back.

Every ``interval_s`` it looks at three things (runtime/README.md, "Operations: faults"):

* the Python-backend **stub processes** that are children of the tritonserver process: a stub
  seen before whose pid is gone (or a zombie) while its model version is still READY has died
  (SIGKILL, the OOM killer, a segfault in a native library);
* a **canary** inference on each canary model (``recommend``: an empty history, ``top_k=1``,
  ``beam_width=1``, a short deadline): the Python backend's ``Stub process ... is not healthy``
  error means a dead or frozen stub; a timeout or an error while the model makes no progress
  (its execution count stands still) means a stuck one;
* the model's **execution count** (``/v2/models/<m>/stats``), which tells a busy model (the
  canary times out, or is refused by the opt-in bounded queue, but requests complete) from a
  stuck one.

A dead stub is recovered with the repository API: ``unload`` then ``load`` (the server runs with
``--model-control-mode=explicit``). While the model is unloaded, Triton's own readiness
(``/v2/health/ready`` with ``--strict-readiness``, ``/v2/models/<m>/ready``) answers not-ready, so
load balancers, the feed service's readiness and ``genrec-stack status`` follow it. If a model
does not come back after ``max_recoveries`` unload + load in a row, the whole server is
restarted (the ``restart`` callback of the launcher).

``HealthTracker`` holds the decision logic and nothing else (unit-tested with fake
observations); ``TritonProbe`` talks to the server over HTTP; ``Watchdog`` runs the loop in a
thread, logs one JSON line per detection and recovery and counts them (Prometheus, optional).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

STUB_BINARY = "triton_python_backend_stub"
# one tiny request: a cold user (empty history), one item, one beam (valid for every named config)
CANARY_PARAMETERS = {"top_k": 1, "beam_width": 1}
CANARY_INPUTS = (("history_items", "INT64"), ("history_actions", "INT64"), ("history_timestamps", "FP64"), ("history_devices", "INT64"))


class Verdict(Enum):
    """What one canary inference says about the model."""

    OK = "ok"
    BUSY = "busy"  # refused by the opt-in bounded queue (UNAVAILABLE): the model is overloaded, not dead
    UNHEALTHY = "unhealthy"  # the Python backend says its stub is dead or frozen
    FAILED = "failed"  # timed out, or any other error
    ABSENT = "absent"  # the model is not loaded (nothing to say about its health)


def classify(status: int | None, message: str) -> Verdict:
    """A canary's HTTP status (None: no answer within the deadline) and error message -> Verdict."""
    if status == 200:
        return Verdict.OK
    if "is not healthy" in message:
        return Verdict.UNHEALTHY
    if status == 503 or "Exceeds maximum queue size" in message or "Request timeout expired" in message:
        return Verdict.BUSY
    if status == 404 or "unknown model" in message:
        return Verdict.ABSENT
    return Verdict.FAILED


class Action(Enum):
    NONE = "none"
    RECOVER = "recover"  # unload + load the model
    RESTART = "restart"  # restart the server


@dataclass(frozen=True)
class Observation:
    """One tick's evidence about one model."""

    ready: bool  # a version is READY in the repository index
    stub_lost: bool = False  # a stub process of a READY version died since the last tick
    canary: Verdict | None = None  # None: this model has no canary
    progressed: bool = False  # its execution count rose since the last tick


@dataclass
class HealthTracker:
    """The decision logic for one model: when to recover it, when to give up and restart.

    * a lost stub or an ``UNHEALTHY`` canary: recover now;
    * a canary that times out or fails (or is refused as BUSY) while the model's execution count
      stands still, ``failures`` ticks in a row: recover (a stuck model);
    * a failing canary while requests still complete: no action (a reload cannot fix an error the
      model itself returns, and an overloaded model must not be reloaded);
    * a recovery whose load failed, or after which the model fails again before one canary
      passed, counts as unsuccessful; after ``max_recoveries`` of those in a row: restart.
    """

    failures: int = 3
    max_recoveries: int = 2
    bad_ticks: int = 0
    attempts: int = 0  # recoveries since the model last proved healthy
    pending: bool = False  # our unload happened, our load did not succeed: the model is ours to bring back

    def observe(self, obs: Observation) -> tuple[Action, str]:
        if self.pending:
            return self._act("load_failed")
        if not obs.ready:  # unloaded by an operator or a rollback: not ours to fix
            self.bad_ticks = 0
            return Action.NONE, ""
        if obs.stub_lost:
            return self._act("stub_lost")
        if obs.canary is Verdict.UNHEALTHY:
            return self._act("stub_unhealthy")
        if obs.canary is Verdict.OK or (obs.canary is None and not obs.stub_lost):
            self.bad_ticks, self.attempts = 0, 0
            return Action.NONE, ""
        if obs.canary in (Verdict.FAILED, Verdict.BUSY) and not obs.progressed:
            self.bad_ticks += 1
            if self.bad_ticks >= self.failures:
                return self._act("stuck")
            return Action.NONE, ""
        self.bad_ticks = 0  # busy or failing, but executing: not stuck
        return Action.NONE, ""

    def _act(self, reason: str) -> tuple[Action, str]:
        self.bad_ticks = 0
        if self.attempts >= self.max_recoveries:
            self.attempts, self.pending = 0, False
            return Action.RESTART, reason
        self.attempts += 1
        return Action.RECOVER, reason

    def recovered(self, loaded: bool) -> None:
        """Report the outcome of a RECOVER (the load call succeeded or not)."""
        self.pending = not loaded

    def restarted(self) -> None:
        self.bad_ticks, self.attempts, self.pending = 0, 0, False


@dataclass
class RestartBudget:
    """At most ``max_restarts`` server restarts within any ``window_s`` seconds: a server that
    keeps crashing is left to the launcher's own supervisor instead of restarting in a loop."""

    max_restarts: int = 3
    window_s: float = 600.0
    times: list[float] = field(default_factory=list)

    @property
    def used(self) -> int:
        return len(self.times)

    def allow(self, now: float) -> bool:
        self.times = [t for t in self.times if now - t < self.window_s]
        if len(self.times) >= self.max_restarts:
            return False
        self.times.append(now)
        return True


# ---- stub processes ------------------------------------------------------------------------


@dataclass(frozen=True)
class Stub:
    pid: int
    model: str
    version: str
    instance: str  # e.g. recommend_0_0
    alive: bool  # False: a zombie (killed, not yet reaped)
    shm: str = ""  # its shared-memory region under /dev/shm (left behind when the stub is killed)


def parse_stub(pid: int, argv: list[str], state: str) -> Stub | None:
    """A stub's argv: [stub, <repo>/<model>/<version>/<file>, shm region, ..., instance name, ...]."""
    if not argv or not argv[0].endswith(STUB_BINARY) or len(argv) < 2:
        return None
    path = Path(argv[1])
    instance = argv[8] if len(argv) > 8 else f"{path.parent.parent.name}_?"
    shm = argv[2] if len(argv) > 2 and argv[2].startswith("triton_") else ""
    return Stub(pid, path.parent.parent.name, path.parent.name, instance, state not in ("Z", "X"), shm)


def _proc_stat(pid: str) -> tuple[str, int] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])  # state, ppid


def child_processes(pid: int) -> list[tuple[int, list[str]]]:
    """The live (not zombie) children of ``pid`` with their argv (Linux /proc)."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        st = _proc_stat(p.name)
        if st is None or st[1] != pid or st[0] == "Z":
            continue
        try:
            argv = [a.decode(errors="replace") for a in (p / "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue
        out.append((int(p.name), argv))
    return out


def find_stubs(server_pid: int) -> list[Stub]:
    """The Python-backend stubs whose parent is ``server_pid`` (Linux /proc)."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        st = _proc_stat(p.name)
        if st is None or st[1] != server_pid:
            continue
        try:
            argv = [a.decode(errors="replace") for a in (p / "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue
        stub = parse_stub(int(p.name), argv, st[0])
        if stub is not None:
            out.append(stub)
    return out


def crashed_stubs(before: Iterable[Stub], state_of: Callable[[int], str | None], ready: dict[str, set[str]]) -> list[Stub]:
    """Stubs alive at the last tick that are zombies now (``state_of(pid)`` "Z"), of a version
    Triton still reports READY: a stub that died by itself (SIGKILL, the OOM killer, a segfault)
    stays unreaped, because the Python backend does not notice it. A stub Triton stops itself (a
    version the policy retires, every version re-created by a publish's load, which can take
    seconds to replace) is reaped at once and is gone instead: treating those as crashes unloaded
    every model during a publish. A stub gone while its model stops answering is the canary's."""
    return [s for s in before if s.alive and state_of(s.pid) in ("Z", "X") and s.version in ready.get(s.model, set())]


def proc_state(pid: int) -> str | None:
    st = _proc_stat(str(pid))
    return None if st is None else st[0]


# ---- the server side ---------------------------------------------------------------------


class TritonProbe:
    """The few HTTP calls the watchdog makes (KServe v2 + Triton's repository extension)."""

    def __init__(self, http_url: str, canary_timeout_s: float = 2.0, control_timeout_s: float = 300.0) -> None:
        self.base = f"http://{http_url}"
        self.canary_timeout_s = canary_timeout_s
        self.control_timeout_s = control_timeout_s
        inputs = [{"name": n, "shape": [0], "datatype": t, "data": []} for n, t in CANARY_INPUTS]
        # the server-side `timeout` (µs) drops a queued canary at its deadline instead of running it late
        params = {**CANARY_PARAMETERS, "timeout": int(canary_timeout_s * 1e6)}
        self.canary_body = json.dumps({"inputs": inputs, "parameters": params}).encode()

    def _request(self, method: str, path: str, body: bytes | None, timeout: float) -> tuple[int, str]:
        """(HTTP status, body or Triton's error message); raises OSError when there is no answer
        (TimeoutError: none within ``timeout``; others: refused, reset)."""
        req = urllib.request.Request(self.base + path, data=body, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            try:
                text = json.loads(text).get("error", text)
            except (ValueError, AttributeError):
                pass
            return e.code, text
        except urllib.error.URLError as e:  # the connection failed (its timeout included)
            raise (e.reason if isinstance(e.reason, OSError) else OSError(str(e.reason))) from e

    def _call(self, method: str, path: str, body: bytes | None, timeout: float) -> tuple[int | None, str]:
        """``_request``, with None for the status when there is no answer."""
        try:
            return self._request(method, path, body, timeout)
        except (OSError, ValueError) as e:  # refused, reset, timed out
            return None, str(e)

    def ready_versions(self) -> dict[str, set[str]]:
        """model -> its READY versions (POST /v2/repository/index)."""
        status, text = self._call("POST", "/v2/repository/index", b"{}", 5.0)
        if status != 200:
            raise ConnectionError(f"repository index: {status} {text[:200]}")
        out: dict[str, set[str]] = {}
        for m in json.loads(text):
            if m.get("state") == "READY":
                out.setdefault(m["name"], set()).add(str(m.get("version", "")))
        return out

    def execution_count(self, model: str) -> int | None:
        status, text = self._call("GET", f"/v2/models/{model}/stats", None, 5.0)
        if status != 200:
            return None
        stats = json.loads(text).get("model_stats", [])
        return sum(int(s.get("execution_count", 0)) + int(s.get("inference_stats", {}).get("fail", {}).get("count", 0)) for s in stats)

    def canary(self, model: str) -> tuple[Verdict, str, float]:
        t0 = time.perf_counter()
        status, text = self._call("POST", f"/v2/models/{model}/infer", self.canary_body, self.canary_timeout_s)
        return classify(status, text), ("" if status == 200 else text[:300]), time.perf_counter() - t0

    def unload(self, model: str, timeout_s: float | None = None) -> tuple[bool | None, str]:
        """(True: unloaded; False: refused, or the server did not answer at all (down); None: no
        answer within ``timeout_s``, default the control timeout, the unload still going on),
        Triton's message."""
        timeout = timeout_s or self.control_timeout_s
        try:
            status, text = self._request("POST", f"/v2/repository/models/{model}/unload", b"{}", timeout)
        except TimeoutError:
            return None, f"no answer within {timeout:g} s"
        except (OSError, ValueError) as e:  # refused or reset: the server is down (its launcher restarts it)
            return False, str(e)[:300]
        return status == 200, text[:300]

    def load(self, model: str) -> tuple[bool, str]:
        status, text = self._call("POST", f"/v2/repository/models/{model}/load", b"{}", self.control_timeout_s)
        return status == 200, text[:300]


def log_json(event: str, **fields: object) -> None:
    """One structured line on stdout (the launcher's log): {"ts", "component": "watchdog", "event", ...}."""
    print(json.dumps({"ts": round(time.time(), 3), "component": "watchdog", "event": event, **fields}), flush=True)


class WatchdogMetrics:
    """Prometheus counters of the watchdog (served by the launcher with --watchdog-metrics-port)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        self.detections = Counter(
            "genrec_watchdog_detections_total", "Unhealthy model instances found, by reason", ["model", "reason"], registry=self.registry
        )
        self.recoveries = Counter(
            "genrec_watchdog_recoveries_total",
            "Recoveries (unload+load, restart), by outcome",
            ["model", "action", "result"],
            registry=self.registry,
        )
        self.recovery_seconds = Gauge(
            "genrec_watchdog_last_recovery_seconds", "Seconds from detection to the model READY again", ["model"], registry=self.registry
        )
        self.healthy = Gauge("genrec_watchdog_model_healthy", "1 if the last check passed", ["model"], registry=self.registry)

    def serve(self, port: int) -> None:
        from prometheus_client import start_http_server

        start_http_server(port, registry=self.registry)


@dataclass
class Watchdog:
    """The loop: every ``interval_s`` observe each canary model, decide, act. ``server_pid``
    returns the tritonserver pid (None: not a child of this machine's launcher; stubs unchecked)."""

    probe: TritonProbe
    server_pid: Callable[[], int | None]
    canary_models: tuple[str, ...] = ("recommend",)
    interval_s: float = 1.0
    failures: int = 3
    max_recoveries: int = 2
    restart: Callable[[], None] | None = None  # None: log and keep recovering by unload + load
    # restarts past this budget (shared with the launcher's crash restarts) are refused: give_up
    # stops the server instead, and the launcher exits for its own supervisor (None: no limit)
    restart_budget: RestartBudget | None = None
    give_up: Callable[[], None] | None = None
    # an unload waits for the dead instance's queue, which it fails one request per second (the
    # Python backend's health poll): past this, restart the server instead of waiting it out
    unload_timeout_s: float = 15.0
    recover_by_reload: bool = True  # False (poll/none control mode): every action is a restart
    metrics: WatchdogMetrics | None = None
    log: Callable[..., None] = log_json
    shm_regions: set[str] = field(default_factory=set)  # every stub's region seen (the launcher removes leftovers at stop)
    trackers: dict[str, HealthTracker] = field(default_factory=dict)
    _stubs: list[Stub] = field(default_factory=list)
    _counts: dict[str, int | None] = field(default_factory=dict)
    _server: int | None = None  # the tritonserver pid of the last tick
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Watchdog:
        pid = self.server_pid()
        self._stubs = find_stubs(pid) if pid else []
        self._thread = threading.Thread(target=self._run, name="triton-watchdog", daemon=True)
        self._thread.start()
        self.log(
            "started", models=list(self.canary_models), interval_s=self.interval_s, stubs=sorted(s.instance for s in self._stubs if s.alive)
        )
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception as e:  # the watchdog must outlive any one bad tick
                self.log("error", error=f"{type(e).__name__}: {e}")

    def tick(self) -> None:
        pid = self.server_pid()
        if pid is not None and self._server is not None and pid != self._server:
            self._forget()  # a new server (the launcher restarted a crashed one): nothing carried over
        self._server = pid or self._server
        stubs = find_stubs(pid) if pid else []
        before = self._stubs
        self._stubs = stubs
        self.shm_regions.update(s.shm for s in stubs if s.shm)
        try:
            ready = self.probe.ready_versions()
        except (ConnectionError, ValueError):
            return  # the server is down or restarting: the launcher sees its process exit
        lost = crashed_stubs(before, proc_state, ready)
        for model in sorted({*self.canary_models, *(s.model for s in lost)}):
            if self._stop.is_set():
                return
            self._check(model, ready, [s for s in lost if s.model == model])

    def _check(self, model: str, ready: dict[str, set[str]], lost: list[Stub]) -> None:
        tracker = self.trackers.setdefault(model, HealthTracker(self.failures, self.max_recoveries))
        verdict, detail, took = None, "", 0.0
        if model in self.canary_models and model in ready and not lost:
            verdict, detail, took = self.probe.canary(model)
        count = self.probe.execution_count(model) if verdict not in (None, Verdict.OK) else None
        progressed = count is not None and self._counts.get(model) is not None and count > (self._counts[model] or 0)
        self._counts[model] = count
        obs = Observation(ready=model in ready, stub_lost=bool(lost), canary=verdict, progressed=progressed)
        action, reason = tracker.observe(obs)
        if self.metrics:
            self.metrics.healthy.labels(model).set(1 if action is Action.NONE and verdict in (None, Verdict.OK) else 0)
        if action is Action.NONE:
            return
        self.log(
            "detected",
            model=model,
            reason=reason,
            canary=verdict.value if verdict else None,
            canary_s=round(took, 3),
            detail=detail,
            lost_pids=[s.pid for s in lost],
            attempt=tracker.attempts,
        )
        if self.metrics:
            self.metrics.detections.labels(model, reason).inc()
        if action is Action.RECOVER and self.recover_by_reload:
            self._recover(model, tracker)
        else:
            self._restart(model, tracker)

    def _recover(self, model: str, tracker: HealthTracker) -> None:
        t0 = time.monotonic()
        unloaded, why = self.probe.unload(model, self.unload_timeout_s)  # readiness turns false here
        if unloaded is None:  # still draining a dead instance's queue
            self.log("unload_stalled", model=model, seconds=round(time.monotonic() - t0, 3), detail=why)
            self._restart(model, tracker)
            return
        loaded, why_load = self.probe.load(model)  # also after a failed unload (the model may be gone already)
        tracker.recovered(loaded)
        took = time.monotonic() - t0
        self.log(
            "recovered" if loaded else "recovery_failed",
            model=model,
            action="unload_load",
            seconds=round(took, 3),
            error=None if loaded else why_load,
            unload_error=None if unloaded else why,
        )
        if self.metrics:
            self.metrics.recoveries.labels(model, "unload_load", "ok" if loaded else "failed").inc()
            if loaded:
                self.metrics.recovery_seconds.labels(model).set(took)
        pid = self.server_pid()
        self._stubs = find_stubs(pid) if pid else []

    def _forget(self) -> None:
        """What a server restart makes stale: recovery attempts, execution counts, stubs."""
        for t in self.trackers.values():
            t.restarted()
        self._counts.clear()
        self._stubs = []

    def _restart(self, model: str, tracker: HealthTracker) -> None:
        if self.restart is None:
            self.log("restart_skipped", model=model, reason="no restart callback: recovering by unload + load again")
            tracker.restarted()
            return
        t0 = time.monotonic()
        if self.restart_budget is not None and not self.restart_budget.allow(t0):
            self.log("restart_refused", model=model, reason="restart budget spent", restarts=self.restart_budget.used)
            if self.metrics:
                self.metrics.recoveries.labels(model, "restart", "refused").inc()
            self._stop.set()
            if self.give_up is not None:
                self.give_up()
            return
        ok, error = True, None
        try:
            self.restart()
        except Exception as e:
            ok, error = False, f"{type(e).__name__}: {e}"
        self._forget()
        pid = self.server_pid()
        self._server = pid
        self._stubs = find_stubs(pid) if pid else []
        self.log("restarted" if ok else "restart_failed", model=model, seconds=round(time.monotonic() - t0, 3), error=error)
        if self.metrics:
            self.metrics.recoveries.labels(model, "restart", "ok" if ok else "failed").inc()
        if not ok:
            self._stop.set()  # the launcher sees the server gone and exits non-zero
