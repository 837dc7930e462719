"""The watchdog's decision logic (runtime/watchdog.py) with fake observations and a fake probe:
when it recovers a model, when it leaves it alone, when it gives up and restarts the server."""

from __future__ import annotations

from genrec.runtime.watchdog import (
    Action,
    HealthTracker,
    Observation,
    Stub,
    Verdict,
    Watchdog,
    classify,
    crashed_stubs,
    parse_stub,
)

OK = Observation(ready=True, canary=Verdict.OK)


def test_classify_maps_triton_answers():
    assert classify(200, "") is Verdict.OK
    assert classify(500, "Stub process 'recommend_0_0' is not healthy.") is Verdict.UNHEALTHY
    assert classify(503, "Exceeds maximum queue size") is Verdict.BUSY
    assert classify(500, "Request timeout expired") is Verdict.BUSY
    assert classify(404, "Request for unknown model: 'recommend' has no available versions") is Verdict.ABSENT
    assert classify(None, "timed out") is Verdict.FAILED
    assert classify(500, "recommend failed: boom") is Verdict.FAILED


def test_a_lost_stub_or_an_unhealthy_canary_is_recovered_at_once():
    t = HealthTracker(failures=3)
    assert t.observe(OK) == (Action.NONE, "")
    assert t.observe(Observation(ready=True, stub_lost=True)) == (Action.RECOVER, "stub_lost")
    t.recovered(loaded=True)
    assert t.observe(OK)[0] is Action.NONE  # a passing canary resets the attempts
    assert t.observe(Observation(ready=True, canary=Verdict.UNHEALTHY)) == (Action.RECOVER, "stub_unhealthy")


def test_a_stuck_model_is_recovered_after_failures_ticks_without_progress():
    t = HealthTracker(failures=3)
    stuck = Observation(ready=True, canary=Verdict.FAILED, progressed=False)
    assert [t.observe(stuck)[0] for _ in range(3)] == [Action.NONE, Action.NONE, Action.RECOVER]
    assert t.observe(stuck)[0] is Action.NONE  # counting starts again after a recovery


def test_a_busy_or_failing_model_that_still_executes_is_left_alone():
    t = HealthTracker(failures=2)
    for canary in (Verdict.BUSY, Verdict.FAILED) * 5:
        assert t.observe(Observation(ready=True, canary=canary, progressed=True))[0] is Action.NONE
    # one tick without progress between busy ticks with progress never adds up to a recovery
    for progressed in (False, True) * 5:
        assert t.observe(Observation(ready=True, canary=Verdict.BUSY, progressed=progressed))[0] is Action.NONE


def test_a_model_unloaded_by_someone_else_is_not_touched():
    t = HealthTracker(failures=1)
    assert t.observe(Observation(ready=False, canary=Verdict.ABSENT)) == (Action.NONE, "")


def test_two_unsuccessful_recoveries_then_a_restart():
    t = HealthTracker(failures=3, max_recoveries=2)
    dead = Observation(ready=True, canary=Verdict.UNHEALTHY)
    assert t.observe(dead)[0] is Action.RECOVER
    t.recovered(loaded=True)
    assert t.observe(dead)[0] is Action.RECOVER  # failed again before any canary passed
    t.recovered(loaded=False)
    assert t.observe(Observation(ready=False)) == (Action.RESTART, "load_failed")  # our load failed: still ours
    t.restarted()
    assert t.observe(OK)[0] is Action.NONE


def test_a_failed_load_is_retried_even_though_the_model_is_not_ready():
    t = HealthTracker(max_recoveries=2)
    assert t.observe(Observation(ready=True, stub_lost=True))[0] is Action.RECOVER
    t.recovered(loaded=False)
    assert t.observe(Observation(ready=False)) == (Action.RECOVER, "load_failed")


def test_stub_argv_names_model_version_and_instance():
    argv = [
        "/b/python/triton_python_backend_stub",
        "/repo/recommend/3/model.py",
        "shm",
        "1048576",
        "1048576",
        "42",
        "/b/python",
        "336",
        "recommend_0_0",
        "DEFAULT",
    ]
    assert parse_stub(7, argv, "S") == Stub(7, "recommend", "3", "recommend_0_0", True)
    assert parse_stub(7, argv, "Z").alive is False
    assert parse_stub(7, ["/usr/bin/python3", "x.py"], "S") is None


def test_only_a_stub_left_unreaped_of_a_ready_version_is_a_crash():
    """A publish's loads end stubs of versions Triton re-creates or retires (reaped, gone; the
    version may read READY for seconds): treating those as crashes unloaded every model during a
    publish. A killed stub stays a zombie: Triton's Python backend does not reap it."""
    a = Stub(1, "recommend", "1", "recommend_0_0", True)
    zombie, gone, running = {1: "Z"}.get, {}.get, {1: "S"}.get
    assert crashed_stubs([a], zombie, {"recommend": {"1", "2"}}) == [a], "killed, still READY"
    assert crashed_stubs([a], gone, {"recommend": {"1", "2"}}) == [], "stopped and reaped by Triton (a reload, a retire)"
    assert crashed_stubs([a], running, {"recommend": {"1"}}) == []
    assert crashed_stubs([a], zombie, {"recommend": {"2"}}) == [], "its version is not served any more"
    assert crashed_stubs([Stub(1, "recommend", "1", "recommend_0_0", False)], zombie, {"recommend": {"1"}}) == [], "reported already"


class FakeProbe:
    """Answers the watchdog's calls from a script; records unload/load."""

    def __init__(self, canaries: list[Verdict], load_ok: bool = True, unload_answers: bool = True) -> None:
        self.canaries, self.load_ok, self.unload_answers, self.calls = list(canaries), load_ok, unload_answers, []
        self.count = 0

    def ready_versions(self):
        return {"recommend": {"1"}}

    def canary(self, model):
        return self.canaries.pop(0), "", 0.01

    def execution_count(self, model):
        return self.count  # stands still: no progress

    def unload(self, model, timeout_s=None):
        self.calls.append(("unload", model))
        return (True, "") if self.unload_answers else (None, "timed out")

    def load(self, model):
        self.calls.append(("load", model))
        return self.load_ok, "" if self.load_ok else "failed to load"


def test_watchdog_unloads_and_loads_then_restarts_when_that_does_not_help():
    events, restarts = [], []
    probe = FakeProbe([Verdict.OK, Verdict.UNHEALTHY, Verdict.UNHEALTHY, Verdict.UNHEALTHY, Verdict.OK])
    dog = Watchdog(probe, server_pid=lambda: None, restart=lambda: restarts.append(1), log=lambda e, **f: events.append((e, f)))  # type: ignore[arg-type]
    for _ in range(5):
        dog.tick()
    assert probe.calls == [("unload", "recommend"), ("load", "recommend")] * 2
    assert restarts == [1]
    assert [e for e, _ in events] == ["detected", "recovered", "detected", "recovered", "detected", "restarted"]
    assert events[0][1]["reason"] == "stub_unhealthy" and events[1][1]["action"] == "unload_load"


def test_an_unload_stuck_draining_a_dead_instance_is_followed_by_a_restart():
    events, restarts = [], []
    probe = FakeProbe([Verdict.UNHEALTHY, Verdict.OK], unload_answers=False)
    dog = Watchdog(probe, server_pid=lambda: None, restart=lambda: restarts.append(1), log=lambda e, **f: events.append((e, f)))  # type: ignore[arg-type]
    dog.tick()
    assert probe.calls == [("unload", "recommend")] and restarts == [1]  # no load into a server being replaced
    assert [e for e, _ in events] == ["detected", "unload_stalled", "restarted"]
    dog.tick()  # healthy after the restart: nothing more
    assert restarts == [1] and len(events) == 3


def test_a_watchdog_restart_past_the_shared_budget_is_refused_and_the_server_given_up():
    import time

    from genrec.runtime.watchdog import RestartBudget

    events, restarts, given_up = [], [], []
    budget = RestartBudget(max_restarts=1, window_s=600.0)
    assert budget.allow(time.monotonic())  # the launcher already restarted a crashed server once
    probe = FakeProbe([Verdict.UNHEALTHY, Verdict.OK], unload_answers=False)
    dog = Watchdog(
        probe,  # type: ignore[arg-type]
        server_pid=lambda: None,
        restart=lambda: restarts.append(1),
        restart_budget=budget,
        give_up=lambda: given_up.append(1),
        log=lambda e, **f: events.append((e, f)),
    )
    dog.tick()
    assert restarts == [] and given_up == [1] and dog._stop.is_set()
    assert [e for e, _ in events] == ["detected", "unload_stalled", "restart_refused"]


def test_recommend_queue_is_bounded_from_settings_and_an_operator_may_change_the_bounds(tmp_path):
    from genrec.contracts import recommend_contract
    from genrec.exporters.pbtxt import render
    from genrec.exporters.publish import check_config
    from genrec.settings import named_config

    cfg = named_config("tiny", environ={"GENREC_SERVING__MAX_QUEUE_SIZE": "8", "GENREC_SERVING__QUEUE_TIMEOUT_MS": "250"})
    c = recommend_contract(cfg)
    text = render(c)
    assert "max_batch_size: 0" in text and "timeout_action: REJECT" in text
    assert "max_queue_size: 8" in text and "default_timeout_microseconds: 250000" in text
    (tmp_path / c.name).mkdir()
    (tmp_path / c.name / "config.pbtxt").write_text(text.replace("max_queue_size: 8", "max_queue_size: 32"))
    check_config(tmp_path / c.name, recommend_contract(named_config("tiny", environ={})))  # a deployment knob, not the contract
    assert "default_queue_policy" not in render(recommend_contract(named_config("tiny", environ={"GENREC_SERVING__MAX_QUEUE_SIZE": "0"})))


def test_watchdog_counters_are_served_for_prometheus():
    import urllib.request

    from genrec.runtime.ports import free_port
    from genrec.runtime.watchdog import WatchdogMetrics

    metrics, port = WatchdogMetrics(), free_port()
    metrics.serve(port)
    probe = FakeProbe([Verdict.UNHEALTHY])
    Watchdog(probe, server_pid=lambda: None, metrics=metrics, log=lambda e, **f: None).tick()  # type: ignore[arg-type]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert 'genrec_watchdog_detections_total{model="recommend",reason="stub_unhealthy"} 1.0' in text
    assert 'genrec_watchdog_recoveries_total{action="unload_load",model="recommend",result="ok"} 1.0' in text


def test_restart_budget_allows_so_many_restarts_per_window():
    from genrec.runtime.watchdog import RestartBudget

    budget = RestartBudget(max_restarts=2, window_s=60.0)
    assert budget.allow(0.0) and budget.allow(10.0)
    assert not budget.allow(20.0) and budget.used == 2  # a server that keeps crashing: the supervisor's turn
    assert budget.allow(61.0)  # the first restart has left the window
    assert not budget.allow(65.0)


class FakeProc:
    def __init__(self, code: int, on_wait=None) -> None:
        self.code, self.on_wait = code, on_wait

    def wait(self):
        if self.on_wait:
            self.on_wait()
        return self.code


class FakeServer:
    """``supervise``'s view of a TritonServer: its process, lock, restart() and exit_reason."""

    def __init__(self, codes: list[int], restart_ok: bool = True) -> None:
        import threading

        self.codes, self.restart_ok, self.restarts = list(codes), restart_ok, 0
        self.lock, self.exit_reason = threading.RLock(), None
        self.proc = FakeProc(self.codes.pop(0))

    def restart(self) -> None:
        self.restarts += 1
        if not self.restart_ok:
            self.exit_reason = "restart_failed"
            raise RuntimeError("tritonserver exited with code 1")
        self.proc = FakeProc(self.codes.pop(0))


def _supervise(server, budget=None):
    from genrec.runtime.triton_server import supervise

    events = []
    code = supervise(server, budget, log=lambda e, **f: events.append((e, f)))  # type: ignore[arg-type]
    return code, [(e, f.get("action")) for e, f in events]


def test_supervise_restarts_a_crashed_server_and_exits_with_a_clean_one():
    from genrec.runtime.watchdog import RestartBudget

    server = FakeServer([-9, 0])
    assert _supervise(server, RestartBudget(3, 600)) == (0, [("server_exited", "restart"), ("restarted", None), ("server_exited", "exit")])
    assert server.restarts == 1


def test_supervise_leaves_a_server_that_keeps_crashing_to_its_own_supervisor():
    from genrec.runtime.watchdog import RestartBudget

    server = FakeServer([-11, -11, -11])
    code, events = _supervise(server, RestartBudget(2, 600))
    assert code == -11 and server.restarts == 2 and events[-1] == ("server_exited", "exit")


def test_supervise_exits_non_zero_when_a_restart_cannot_start_the_server():
    server = FakeServer([-9], restart_ok=False)
    code, events = _supervise(server)
    assert code == -9 and events[-1] == ("restart_failed", None)


def test_supervise_waits_on_through_a_watchdog_restart_and_exits_after_a_failed_one():
    server = FakeServer([0])
    old = server.proc

    def watchdog_restarts_it():  # the watchdog replaced the process while the launcher waited on the old one
        server.proc = FakeProc(0, on_wait=lambda: setattr(server, "exit_reason", None))
        old.on_wait = None

    old.on_wait = watchdog_restarts_it
    old.code = -15  # the watchdog's stop of the old process
    assert _supervise(server) == (0, [("server_exited", "exit")])  # not restarted by the launcher: the new one exited cleanly

    failed = FakeServer([-15])
    failed.exit_reason = "restart_failed"  # the watchdog's restart could not start a new one
    code, events = _supervise(failed)
    assert code == -15 and events == [("server_exited", "exit")] and failed.restarts == 0

    spent = FakeServer([-15])
    spent.exit_reason = "restart_budget_spent"  # the watchdog's restart budget was spent: it stopped the server
    assert _supervise(spent) == (-15, [("server_exited", "exit")]) and spent.restarts == 0


def test_a_new_server_process_makes_the_watchdog_forget_the_old_one():
    pids = iter([101, 202])
    probe = FakeProbe([Verdict.OK, Verdict.OK])
    dog = Watchdog(probe, server_pid=lambda: next(pids), log=lambda e, **f: None)  # type: ignore[arg-type]
    dog.tick()
    dog.trackers["recommend"].pending = True  # a load that failed while the old server was dying
    dog.tick()  # the launcher restarted it: nothing to reload on the fresh server
    assert probe.calls == [] and not dog.trackers["recommend"].pending


def test_a_run_trained_under_the_old_default_publishes_this_deployments_queue_bounds():
    from dataclasses import replace

    from genrec.settings import deployed, named_config

    trained = named_config("tiny", environ={})
    trained = replace(trained, serving=replace(trained.serving, max_queue_size=64), pipeline=replace(trained.pipeline, final_k=7))
    assert deployed(trained, environ={}).serving.max_queue_size == 0  # today's default, not the saved one
    assert deployed(trained, environ={"GENREC_SERVING__MAX_QUEUE_SIZE": "32"}).serving.max_queue_size == 32
    assert deployed(trained, environ={"GENREC_PIPELINE__FINAL_K": "3"}).pipeline.final_k == 7  # the model's own settings stay the run's
