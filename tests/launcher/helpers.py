"""Run `python -m crucible_ui.launcher` (what `make run` runs) as a test's own process tree.

Used by the launcher's smoke test and the stack fault tests (tests/faults/test_stack_*.py):
free ports, its own var/ folder, and a record of every process it started so that nothing
outlives the test, whatever happened.
"""

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crucible_ui.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
# Settings the test session set for itself; the launcher must start from a clean slate.
INHERITED = (
    "DATABASE_URL",
    "REDIS_URL",
    "CELERY_BROKER_URL",
    "CELERY_RESULT_BACKEND",
    "DJANGO_ALLOW_ASYNC_UNSAFE",
)


def proc_stat(pid: int) -> tuple[int, int, int, str] | None:
    """Return (ppid, pgid, start time, state) of a live process, or None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may hold spaces and parentheses: split after its last ")".
    fields = raw[raw.rindex(")") + 2 :].split()
    state, ppid, pgid, start = fields[0], int(fields[1]), int(fields[2]), int(fields[19])
    return None if state in {"Z", "X"} else (ppid, pgid, start, state)


def cmdline(pid: int) -> str:
    """Return the command line of pid ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def descendants(root: int) -> dict[int, tuple[int, int, str]]:
    """Return {pid: (pgid, start time, command line)} of every live descendant of root."""
    stats: dict[int, tuple[int, int, int, str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := proc_stat(int(entry))) is not None:
            stats[int(entry)] = stat
    found: dict[int, tuple[int, int, str]] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, pgid, start, _state) in stats.items():
            if ppid == parent and pid not in found:
                found[pid] = (pgid, start, cmdline(pid))
                frontier.append(pid)
    return found


def still_running(pid: int, start: int) -> bool:
    """Return True while pid runs and is the process that started at `start` (not a reused pid)."""
    stat = proc_stat(pid)
    return stat is not None and stat[2] == start


def group_members(pgid: int) -> list[int]:
    """Return the live processes still in process group pgid."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := proc_stat(int(entry))) is not None and stat[1] == pgid:
            members.append(int(entry))
    return members


def health(port: int) -> tuple[int, dict[str, Any]] | None:
    """Return (status, body) of GET /healthz on 127.0.0.1:port, or None when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except (OSError, ValueError):
        return None


def launcher_environment(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """Return an environment for a launcher of its own: free ports, its own var/ and SQLite file."""
    env = {k: v for k, v in os.environ.items() if k not in INHERITED}
    env.update(
        {
            "VAR_DIR": str(tmp_path / "var"),
            "ARTIFACTS_ROOT": str(tmp_path / "var" / "artifacts"),
            "HOST": "127.0.0.1",
            "PORT": str(free_port()),
            "REDIS_PORT": str(free_port()),
            "CELERY_CONCURRENCY": "1",
            # One web process unless a test asks for more: the fault tests kill "the" web process.
            "WEB_CONCURRENCY": "1",
            "STOP_TIMEOUT": "10",
            "NO_COLOR": "1",
            "LOG_LEVEL": "WARNING",
        }
    )
    env.update(overrides)
    return env


@dataclass
class Launched:
    """The launcher process, its log, and every descendant seen while it ran."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int
    seen: dict[int, tuple[int, int, str]] = field(default_factory=dict)

    def log(self, tail: int = 4000) -> str:
        """Return the tail of what the launcher printed."""
        return self.log_path.read_text(errors="replace")[-tail:]

    def children(self) -> dict[int, tuple[int, int, str]]:
        """Return the live descendants now (and remember them for the clean-up)."""
        now = descendants(self.proc.pid)
        self.seen.update(now)
        return now

    def pid_of(self, needle: str) -> int | None:
        """Return the pid of the process group leader whose command line holds needle."""
        for pid, (pgid, _start, command) in self.children().items():
            if needle in command and pid == pgid:
                return pid
        return None

    def wait_healthy(self, timeout: float = 120.0) -> dict[str, Any]:
        """Return /healthz's body once every part is up; fail with the log if it never is."""
        deadline = time.monotonic() + timeout
        answer: tuple[int, dict[str, Any]] | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the launcher exited early:\n{self.log()}")
            self.children()
            answer = health(self.port)
            if answer is not None and answer[0] == 200:
                return answer[1]
            time.sleep(0.5)
        raise AssertionError(f"/healthz never became ok (last: {answer}):\n{self.log()}")

    def stop(self, timeout: float = 90.0) -> int:
        """Ctrl-C the launcher and return its exit status."""
        self.children()
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=timeout)

    def kill_everything(self) -> None:
        """Kill the launcher and whatever it started that still runs (a failed test's clean-up)."""
        if self.proc.poll() is None:
            self.children()
            self.proc.kill()
            self.proc.wait(10)
        for pid, (pgid, start, _cmd) in self.seen.items():
            if still_running(pid, start):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)


def start_launcher(env: dict[str, str], log_path: Path, *args: str) -> Launched:
    """Start `python -m crucible_ui.launcher *args` in a session of its own, its output in log_path."""
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "crucible_ui.launcher", *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Launched(proc=proc, log_path=log_path, port=int(env["PORT"]))
