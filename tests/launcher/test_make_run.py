"""`make run`'s launcher on free ports with its own Redis: all parts healthy, then Ctrl-C leaves nothing."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from crucible_ui.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
# Settings the test session set for itself; the launcher must start from a clean slate.
_INHERITED = (
    "DATABASE_URL",
    "REDIS_URL",
    "CELERY_BROKER_URL",
    "CELERY_RESULT_BACKEND",
    "DJANGO_ALLOW_ASYNC_UNSAFE",
)


def _proc_stat(pid: int) -> tuple[int, int, int, str] | None:
    """Return (ppid, pgid, start time, state) of a live process, or None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may hold spaces and parentheses: split after its last ")".
    fields = raw[raw.rindex(")") + 2 :].split()
    state, ppid, pgid, start = fields[0], int(fields[1]), int(fields[2]), int(fields[19])
    return None if state in {"Z", "X"} else (ppid, pgid, start, state)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _descendants(root: int) -> dict[int, tuple[int, int, str]]:
    """Return {pid: (pgid, start time, command line)} of every live descendant of root."""
    stats: dict[int, tuple[int, int, int, str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _proc_stat(int(entry))) is not None:
            stats[int(entry)] = stat
    found: dict[int, tuple[int, int, str]] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, pgid, start, _state) in stats.items():
            if ppid == parent and pid not in found:
                found[pid] = (pgid, start, _cmdline(pid))
                frontier.append(pid)
    return found


def _still_running(pid: int, start: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[2] == start  # same start time: not a reused pid


def _health(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            body: dict[str, Any] = json.loads(response.read())
            return body
    except urllib.error.HTTPError as exc:
        degraded: dict[str, Any] = json.loads(exc.read())
        return degraded
    except OSError:
        return None


@pytest.fixture
def launcher_env(tmp_path: Path) -> dict[str, str]:
    """Return an environment for a launcher of its own: free ports, its own var/ and SQLite file."""
    env = {k: v for k, v in os.environ.items() if k not in _INHERITED}
    env.update(
        {
            "VAR_DIR": str(tmp_path / "var"),
            "ARTIFACTS_ROOT": str(tmp_path / "var" / "artifacts"),
            "HOST": "127.0.0.1",
            "PORT": str(free_port()),
            "REDIS_PORT": str(free_port()),
            "CELERY_CONCURRENCY": "1",
            "STOP_TIMEOUT": "10",
            "NO_COLOR": "1",
            "LOG_LEVEL": "WARNING",
        }
    )
    return env


@dataclass
class Launched:
    """The launcher process, its log, and every descendant seen while it ran."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    seen: dict[int, tuple[int, int, str]] = field(default_factory=dict)

    def log(self) -> str:
        """Return the tail of what the launcher printed."""
        return self.log_path.read_text(errors="replace")[-4000:]


@pytest.fixture
def launcher(launcher_env: dict[str, str], tmp_path: Path) -> Iterator[Launched]:
    """Start `python -m crucible_ui.launcher` (what `make run` runs); kill what it left if the test fails."""
    log_path = tmp_path / "launcher.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "crucible_ui.launcher", "--no-demo"],
            cwd=ROOT,
            env=launcher_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    launched = Launched(proc=proc, log_path=log_path)
    yield launched
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    for pid, (pgid, start, _cmd) in launched.seen.items():
        if _still_running(pid, start):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)


@pytest.mark.worker
def test_make_run_serves_a_healthy_dashboard_and_ctrl_c_leaves_no_process(
    launcher: Launched, launcher_env: dict[str, str]
) -> None:
    proc, seen = launcher.proc, launcher.seen
    port = int(launcher_env["PORT"])

    body: dict[str, Any] | None = None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the launcher exited early:\n{launcher.log()}"
        seen.update(_descendants(proc.pid))
        body = _health(port)
        if body and body["database"]["ok"] and body["redis"]["ok"] and body["celery"]["ok"]:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"/healthz never became ok (last: {body}):\n{launcher.log()}")
    assert body["status"] == "ok"
    assert body["celery"]["workers"]

    seen.update(_descendants(proc.pid))
    commands = " ".join(cmd for _pgid, _start, cmd in seen.values())
    assert "redis-server" in commands and f":{launcher_env['REDIS_PORT']}" in commands
    assert "celery -A crucible_ui worker" in commands
    assert "celery -A crucible_ui beat" in commands
    assert "daphne" in commands

    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    returncode = proc.wait(timeout=30)
    took = time.monotonic() - started
    log = launcher.log()
    assert returncode == 0, log
    assert took < 15, f"stopping took {took:.1f} s"
    assert "exited unexpectedly" not in log

    left = {pid: cmd for pid, (_pgid, start, cmd) in seen.items() if _still_running(pid, start)}
    assert not left, f"processes left behind: {left}"
    groups = {pgid for pgid, _start, _cmd in seen.values()}
    assert all(not _descendants_of_group(pgid) for pgid in groups)
    assert _health(port) is None, "the web server still answers"


def _descendants_of_group(pgid: int) -> list[int]:
    """Return the live processes still in process group pgid."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _proc_stat(int(entry))) is not None and stat[1] == pgid:
            members.append(int(entry))
    return members
