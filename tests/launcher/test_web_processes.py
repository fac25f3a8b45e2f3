"""Several web processes on the launcher's one listening socket: each serves alone, and a killed one comes back."""

from __future__ import annotations

import os
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.launcher.helpers import Launched, launcher_environment, start_launcher, still_running


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launched]:
    env = launcher_environment(tmp_path, WEB_CONCURRENCY="2")
    launched = start_launcher(env, tmp_path / "launcher.log", "--no-demo")
    yield launched
    launched.kill_everything()


def _web_pids(launcher: Launched) -> list[int]:
    """Return the Daphne processes serving the inherited socket (group leaders, oldest first)."""
    found = [
        (start, pid)
        for pid, (pgid, start, command) in launcher.children().items()
        if "daphne --fd" in command and pid == pgid
    ]
    return [pid for _start, pid in sorted(found)]


def _login_page(port: int) -> int:
    # A new connection each time: the kernel hands it to a process that accepts.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/login/", timeout=60) as response:
        return int(response.status)


@pytest.mark.worker
def test_two_web_processes_share_one_socket_and_each_serves_while_the_other_is_down(
    launcher: Launched,
) -> None:
    launcher.wait_healthy(timeout=120)
    first, second = _web_pids(launcher)
    assert "2 web process(es)" in launcher.log(20000)

    # A stopped process accepts nothing: every answer now comes from the other one.
    os.kill(first, signal.SIGSTOP)  # (a failed test's clean-up SIGKILLs it, stopped or not)
    assert [_login_page(launcher.port) for _ in range(5)] == [200] * 5
    # Killed while stopped: the launcher restarts it; the port never closed meanwhile.
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: "restarted web1" in launcher.log(20000), timeout=60, what="web1 restarted")
    assert _login_page(launcher.port) == 200
    restarted = [pid for pid in _web_pids(launcher) if pid != second]
    assert len(restarted) == 1 and restarted[0] != first

    # Now the other one is stopped: the restarted process alone answers (once it is up; until
    # then the connections wait in the shared backlog instead of being refused).
    os.kill(second, signal.SIGSTOP)
    try:
        assert [_login_page(launcher.port) for _ in range(5)] == [200] * 5
    finally:
        os.kill(second, signal.SIGCONT)

    log = launcher.log(20000)
    assert "web1 (pid" in log and "exited unexpectedly" in log and "crash loop" not in log
    assert launcher.stop(timeout=60) == 0
    left = {pid: cmd for pid, (_pgid, start, cmd) in launcher.seen.items() if still_running(pid, start)}
    assert not left, f"processes left behind: {left}"
