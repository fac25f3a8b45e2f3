"""`make run`'s launcher on free ports with its own Redis: all parts healthy, then Ctrl-C leaves nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.launcher.helpers import (
    Launched,
    group_members,
    health,
    launcher_environment,
    start_launcher,
    still_running,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def launcher_env(tmp_path: Path) -> dict[str, str]:
    """Return an environment for a launcher of its own: free ports, its own var/ and SQLite file."""
    return launcher_environment(tmp_path)


@pytest.fixture
def launcher(launcher_env: dict[str, str], tmp_path: Path) -> Iterator[Launched]:
    """Start `python -m crucible_ui.launcher` (what `make run` runs); kill what it left if the test fails."""
    launched = start_launcher(launcher_env, tmp_path / "launcher.log", "--no-demo")
    yield launched
    launched.kill_everything()


@pytest.mark.worker
def test_make_run_serves_a_healthy_dashboard_and_ctrl_c_leaves_no_process(
    launcher: Launched, launcher_env: dict[str, str]
) -> None:
    body = launcher.wait_healthy(timeout=90)
    assert body["status"] == "ok"
    assert body["database"]["ok"] and body["redis"]["ok"] and body["celery"]["ok"]
    assert body["celery"]["workers"]

    launcher.children()
    commands = " ".join(cmd for _pgid, _start, cmd in launcher.seen.values())
    assert "redis-server" in commands and f":{launcher_env['REDIS_PORT']}" in commands
    assert "celery -A crucible_ui worker" in commands
    assert "celery -A crucible_ui beat" in commands
    assert "daphne" in commands

    started = time.monotonic()
    returncode = launcher.stop(timeout=30)
    took = time.monotonic() - started
    log = launcher.log()
    assert returncode == 0, log
    assert took < 15, f"stopping took {took:.1f} s"
    assert "exited unexpectedly" not in log

    seen = launcher.seen
    left = {pid: cmd for pid, (_pgid, start, cmd) in seen.items() if still_running(pid, start)}
    assert not left, f"processes left behind: {left}"
    groups = {pgid for pgid, _start, _cmd in seen.values()}
    assert all(not group_members(pgid) for pgid in groups)
    assert health(launcher.port) is None, "the web server still answers"
