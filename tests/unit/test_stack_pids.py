"""`genrec-stack down` signals only processes the stack started: a pid file must hold the pid and
the start time recorded when the stack started it, and both must match a live process."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from genrec.runtime.stack import Stack, StackError, _start_time

STACK = Path(sys.executable).with_name("genrec-stack")


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen]:
    """A process the stack did not start, leading its own session and process group (so a
    `down` that believed the pid file would signal its whole group)."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _down(state: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(STACK), "down", "--state-dir", str(state)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("start", ["", "1"], ids=["no-start-time", "other-start-time"])
def test_down_leaves_a_foreign_process_in_a_pid_file_alive(stranger, tmp_path, start):
    (tmp_path / "feed.pid").write_text(f"{stranger.pid} {start}\n")
    assert Stack(tmp_path).pid("feed") is None
    out = _down(tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    time.sleep(0.3)
    assert stranger.poll() is None, "down signalled a process it did not start"
    assert "stale pid file removed" in out.stdout and not (tmp_path / "feed.pid").exists()


def test_down_stops_a_process_recorded_with_its_start_time(stranger, tmp_path):
    # the control: the same kind of process, recorded by the stack, is stopped
    Stack(tmp_path).record("feed", stranger.pid)
    assert (tmp_path / "feed.pid").read_text().split() == [str(stranger.pid), _start_time(stranger.pid)]
    assert Stack(tmp_path).pid("feed") == stranger.pid
    out = _down(tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert stranger.wait(timeout=30) is not None


def test_a_start_without_a_start_time_is_a_failed_start(tmp_path):
    proc = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while _start_time(proc.pid) is not None and time.monotonic() < deadline:  # exited, not yet reaped: a zombie
        time.sleep(0.05)
    try:
        with pytest.raises(StackError, match="exited as it started"):
            Stack(tmp_path).record("feed", proc.pid)
        assert not (tmp_path / "feed.pid").exists()
    finally:
        proc.wait()
