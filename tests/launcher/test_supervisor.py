"""The launcher's supervision, on small real processes: a death is restarted, a crash loop stops all; nothing outlives a stop."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from crucible_ui.launcher import Launcher, Output, RestartPolicy

PY = sys.executable
# Short backoffs so that a crash loop shows within a test's patience.
QUICK = RestartPolicy(backoff_s=0.2, backoff_max_s=1.0, crash_limit=3, crash_window_s=60.0)


def _launcher(
    stop_timeout: float = 5.0, restart: RestartPolicy = QUICK, **timeouts: float
) -> tuple[Launcher, io.StringIO]:
    stream = io.StringIO()
    launcher = Launcher(
        env=dict(os.environ), output=Output(stream), stop_timeout=stop_timeout, restart=restart, **timeouts
    )
    return launcher, stream


def _supervise_in_background(launcher: Launcher) -> tuple[threading.Thread, list[int]]:
    """Run the supervision loop in a thread; its return value lands in the list."""
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(launcher._supervise()), daemon=True)
    thread.start()
    return thread, result


def _wait(predicate: object, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return True
        time.sleep(0.05)
    return False


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


def test_a_child_that_dies_is_restarted_loudly_while_the_others_keep_running(tmp_path: Path) -> None:
    launcher, stream = _launcher()
    sleeper = launcher.spawn("sleeper", [PY, "-c", "import time; time.sleep(60)"])
    marker = tmp_path / "started"
    # Fails on its first start only: the restart must come back and stay up.
    code = (
        "import pathlib, sys, time; m = pathlib.Path(sys.argv[1])\n"
        "if not m.exists():\n    m.write_text('1'); print('about to fail', flush=True); sys.exit(3)\n"
        "print('second start', flush=True); time.sleep(60)\n"
    )
    flaky = launcher.spawn("flaky", [PY, "-c", code, str(marker)])
    first_pid = flaky.pid
    thread, result = _supervise_in_background(launcher)
    try:
        assert _wait(lambda: "flaky  | second start" in stream.getvalue()), stream.getvalue()
        assert flaky.alive() and flaky.pid != first_pid and flaky.starts == 2
        assert sleeper.alive() and sleeper.starts == 1  # untouched
    finally:
        launcher.stop_requested.set()
        thread.join(10)
        launcher.stop_all()
    assert result == [0]
    out = stream.getvalue()
    assert "flaky  | about to fail" in out  # every line carries its process's name
    assert f"flaky (pid {first_pid}) exited unexpectedly with status 3; restarting it" in out
    assert "the other parts keep running" in out and "!!" in out
    assert "restarted flaky" in out
    assert _gone(sleeper.pid) and _gone(flaky.pid)


def test_a_crash_loop_stops_everything_and_says_so_loudly() -> None:
    launcher, stream = _launcher()
    sleeper = launcher.spawn("sleeper", [PY, "-c", "import time; time.sleep(60)"])
    crasher = launcher.spawn("crasher", [PY, "-c", "import sys; print('about to fail'); sys.exit(3)"])
    thread, result = _supervise_in_background(launcher)
    try:
        thread.join(30)
        assert result == [1], stream.getvalue()
    finally:
        launcher.stop_requested.set()
        launcher.stop_all()
    out = stream.getvalue()
    # Three deaths allowed within the window: started three times, the third death ends it.
    assert crasher.starts == 3
    assert out.count("crasher| about to fail") == 3
    assert "it crashed 3 times within 60 s: a crash loop; stopping everything" in out
    assert _gone(sleeper.pid)


def test_the_backoff_doubles_with_each_recent_crash_up_to_its_cap() -> None:
    policy = RestartPolicy(backoff_s=1.0, backoff_max_s=10.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 5, 6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_the_worker_is_stopped_after_the_web_with_its_own_longer_timeout() -> None:
    launcher, stream = _launcher(stop_timeout=1.0, worker_stop_timeout=4.0)
    # The worker takes 2 s to stop (a run saving its checkpoint): more than the others' timeout.
    slow = (
        "import signal, sys, time\n"
        "def stop(*a):\n    print('checkpointing', flush=True); time.sleep(2); print('saved', flush=True); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\nprint('ready', flush=True)\ntime.sleep(60)\n"
    )
    web = launcher.spawn("web", [PY, "-c", "import time; print('ready', flush=True); time.sleep(60)"])
    worker = launcher.spawn("worker", [PY, "-c", slow], stop_timeout=launcher.worker_stop_timeout)
    assert _wait(lambda: stream.getvalue().count("| ready") == 2, timeout=10)
    launcher.stop_all()
    out = stream.getvalue()
    assert "saved" in out and "killing it" not in out
    assert out.index("stopping web") < out.index("stopping worker") < out.index("worker | checkpointing")
    assert "stopping worker (pid" in out and "up to 4 s" in out
    assert worker.proc is not None and worker.proc.returncode == 0
    assert _gone(web.pid) and _gone(worker.pid)


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


def test_an_ipv6_host_is_refused_before_anything_starts(tmp_path: Path) -> None:
    # Daphne's --fd adopts the shared socket as IPv4: an IPv6 one would crash-loop every web
    # process after Redis, the worker and beat were already up. Refused first, with the way out.
    env = {**os.environ, "HOST": "::1", "PORT": "8123", "VAR_DIR": str(tmp_path / "var")}
    done = subprocess.run(
        [sys.executable, "-m", "crucible_ui.launcher", "--no-demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 2
    assert "HOST=::1 is an IPv6 address" in done.stdout
    assert "set HOST=127.0.0.1" in done.stdout
    assert not (tmp_path / "var").exists() or not any((tmp_path / "var").iterdir())
