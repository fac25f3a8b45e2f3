"""The launcher's supervision, on small real processes: a death stops the rest; nothing outlives a stop."""

from __future__ import annotations

import io
import os
import sys
import time

from crucible_ui.launcher import Launcher, Output

PY = sys.executable


def _launcher(stop_timeout: float = 5.0) -> tuple[Launcher, io.StringIO]:
    stream = io.StringIO()
    return Launcher(env=dict(os.environ), output=Output(stream), stop_timeout=stop_timeout), stream


def _gone(pid: int, timeout: float = 3.0) -> bool:
    """Return True once pid has exited (a killed process takes a moment to go, more under load)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in {"Z", "X"}:
                    return True
        except FileNotFoundError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def test_a_child_that_dies_stops_the_others_and_says_so_loudly() -> None:
    launcher, stream = _launcher()
    sleeper = launcher.spawn("sleeper", [PY, "-c", "import time; time.sleep(60)"])
    launcher.spawn("crasher", [PY, "-c", "import sys; print('about to fail'); sys.exit(3)"])
    try:
        assert launcher._supervise() == 1
    finally:
        launcher.stop_all()
    out = stream.getvalue()
    assert "crasher| about to fail" in out  # every line carries its process's name
    assert "crasher (pid" in out and "exited unexpectedly with status 3" in out
    assert "!!" in out
    assert _gone(sleeper.pid)


def test_stopping_kills_a_child_that_ignores_sigterm_and_its_own_children() -> None:
    launcher, stream = _launcher(stop_timeout=1.0)
    # A parent that ignores SIGTERM and a grandchild in the same process group.
    code = (
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print(p.pid, flush=True); time.sleep(60)"
    )
    stubborn = launcher.spawn("stubborn", [PY, "-c", code])
    deadline = time.monotonic() + 10
    while "stubborn| " not in stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(stream.getvalue().split("stubborn| ")[1].split()[0])
    started = time.monotonic()
    launcher.stop_all()
    assert time.monotonic() - started < 5
    assert "did not stop within 1 s: killing it" in stream.getvalue()
    assert _gone(stubborn.pid) and _gone(grandchild)


def test_a_sigterm_reaches_only_the_leader_so_it_can_stop_its_own_children() -> None:
    launcher, stream = _launcher()
    # The leader forwards nothing: its child survives a leader-only SIGTERM until the group kill,
    # unless the leader stops it itself, as Celery's warm shutdown does with its pool.
    code = (
        "import signal, subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(p.pid, flush=True)\n"
        "def stop(*a):\n    p.terminate(); p.wait(); print('pool stopped', flush=True); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\ntime.sleep(60)\n"
    )
    leader = launcher.spawn("leader", [PY, "-c", code])
    deadline = time.monotonic() + 10
    while "leader | " not in stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(stream.getvalue().split("leader | ")[1].split()[0])
    launcher.stop_all()
    out = stream.getvalue()
    assert "pool stopped" in out
    assert "killing it" not in out
    assert _gone(leader.pid) and _gone(child)
