"""Several web processes on the launcher's one listening socket: each serves alone, and a killed one comes back."""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import os
import re
import signal
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.common import WebSocketClient
from crucible_ui.launcher import demo_credentials
from tests.conftest import wait_for
from tests.launcher.helpers import Launched, launcher_environment, start_launcher, still_running

pytestmark = pytest.mark.slow


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


class _Browser:
    """A logged-in session against the launched server (urllib with a cookie jar)."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def cookies(self) -> dict[str, str]:
        return {c.name: str(c.value) for c in self.jar}

    def get(self, path: str) -> str:
        with self.opener.open(self.base + path, timeout=60) as response:
            return str(response.read().decode())

    def post(self, path: str, fields: dict[str, str], **headers: str) -> int:
        data = urllib.parse.urlencode(fields).encode()
        request = urllib.request.Request(self.base + path, data=data, headers=headers)
        with self.opener.open(request, timeout=60) as response:
            return int(response.status)

    def login(self, username: str, password: str) -> None:
        self.get("/login/")
        token = self.cookies()["csrftoken"]
        self.post("/login/", {"username": username, "password": password, "csrfmiddlewaretoken": token})
        assert "sessionid" in self.cookies(), "the demo login failed"


async def _until_state_changed(ws: WebSocketClient, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        text = await asyncio.wait_for(ws.recv(), timeout=max(0.1, deadline - time.monotonic()))
        event = json.loads(text)
        if event.get("type") == "state.changed":
            return dict(event)


@pytest.fixture
def demo_launcher(tmp_path: Path) -> Iterator[Launched]:
    env = launcher_environment(tmp_path, WEB_CONCURRENCY="2")
    launched = start_launcher(env, tmp_path / "launcher.log")
    yield launched
    launched.kill_everything()


@pytest.mark.worker
def test_a_page_on_either_web_process_sees_a_press_served_by_the_other(demo_launcher: Launched) -> None:
    demo_launcher.wait_healthy(timeout=180)
    first, second = _web_pids(demo_launcher)
    browser = _Browser(demo_launcher.port)
    browser.login(*demo_credentials())
    ids = sorted({int(i) for i in re.findall(r'href="/experiments/(\d+)/"', browser.get("/"))})
    pending = next(i for i in ids if 'data-event="queue"' in browser.get(f"/experiments/{i}/"))

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        path = f"/ws/experiments/{pending}/"
        # Each socket opened while the other process is stopped: one socket on each process.
        os.kill(first, signal.SIGSTOP)
        try:
            on_second = await WebSocketClient.connect(demo_launcher.port, path, cookies=browser.cookies())
        finally:
            os.kill(first, signal.SIGCONT)
        os.kill(second, signal.SIGSTOP)
        try:
            on_first = await WebSocketClient.connect(demo_launcher.port, path, cookies=browser.cookies())
        finally:
            os.kill(second, signal.SIGCONT)
        try:
            status = await asyncio.to_thread(
                browser.post,
                f"/experiments/{pending}/actions/queue/",
                {},
                **{"X-CSRFToken": browser.cookies()["csrftoken"], "Accept": "application/json"},
            )
            assert status == 200
            return (await _until_state_changed(on_first, 60), await _until_state_changed(on_second, 60))
        finally:
            await on_first.close()
            await on_second.close()

    seen_first, seen_second = asyncio.run(scenario())
    # Whichever process served the press, the event reached the sockets of both (Redis channel layer).
    for seen in (seen_first, seen_second):
        assert seen["experiment_id"] == pending and seen["target"] == "queued", seen
