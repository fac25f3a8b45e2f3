"""Shared fixtures of the suite (the private Redis itself starts in tests/plugin_services.py).

`celery_worker` starts a real `celery -A crucible_ui worker` against the test database and
the session's Redis. Tests using it need `@pytest.mark.django_db(transaction=True)` (the
worker is another process: it only sees committed rows) and `@pytest.mark.worker`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent

# Short beats so that loss and cancel show within a test's patience.
WORKER_ENV = {
    "HEARTBEAT_SECONDS": "0.5",
    "HEARTBEAT_TIMEOUT_SECONDS": "3",
    "WORKER_OFFLINE_SECONDS": "3",
    "CANCEL_POLL_SECONDS": "0.25",
    "CANCEL_GRACE_SECONDS": "10",
    # A stopped worker's runs checkpoint and its pool is killed after this (the teardown waits 20 s).
    "CRUCIBLE_STOP_TIMEOUT_S": "10",
    "METRIC_FLUSH_SECONDS": "0.1",
    "RETRY_BACKOFF_SECONDS": "0.5",
    "WORKER_CPU_SLOTS": "1",
    "CELERY_TASK_ALWAYS_EAGER": "false",
    "LOG_LEVEL": "WARNING",
}


def worker_database_url() -> str:
    """Return a DATABASE_URL naming the database pytest-django set up for this session."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        name = str(db["NAME"])
        if name == ":memory:" or name.startswith("file:"):
            pytest.skip("a worker process cannot share an in-memory SQLite database")
        return f"sqlite:///{Path(name).resolve()}"
    user = db.get("USER") or ""
    password = db.get("PASSWORD") or ""
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = db.get("HOST") or "localhost"
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgres://{auth}{host}{port}/{db['NAME']}"


@dataclass
class WorkerHandle:
    """A running Celery worker: its node name, process and log file."""

    hostname: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def queue(self) -> str:
        """Return the worker's own queue (worker_direct)."""
        return f"{self.hostname}.dq2"

    def logs(self) -> str:
        """Return what the worker has logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send sig to the worker and its pool processes at once (SIGKILL: the host died)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            if sig == signal.SIGKILL:
                self.proc.wait(10)

    def terminate(self, *, timeout: float) -> float:
        """Send SIGTERM to the worker's main process only (as `make run` does); return the seconds until it exited.

        Fails the test if it is still running after timeout (it is then killed).
        """
        asked = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            pytest.fail(f"the worker did not exit within {timeout:.0f} s of SIGTERM:\n{self.logs()[-4000:]}")
        return time.monotonic() - asked

    def stop(self) -> None:
        """Stop the worker cleanly (warm shutdown), killing it if it will not go."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        # Pool processes share the group; none may outlive the test.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def start_worker(
    *, tmp_path: Path, extra_env: dict[str, str] | None = None, timeout: float = 60.0
) -> WorkerHandle:
    """Start a worker (prefork, one process, one task per child) and wait for its first heartbeat."""
    from control.models import Worker

    hostname = f"test-{uuid.uuid4().hex[:10]}@{os.uname().nodename}"
    env = {
        **os.environ,
        **WORKER_ENV,
        "DATABASE_URL": worker_database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "CELERY_RESULT_BACKEND": settings.CELERY_RESULT_BACKEND,
        "ARTIFACTS_ROOT": str(settings.ARTIFACTS_ROOT),
        "DJANGO_SETTINGS_MODULE": "crucible_ui.settings",
        **(extra_env or {}),
    }
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    log_path = tmp_path / f"worker-{hostname.split('@')[0]}.log"
    args = [
        sys.executable, "-m", "celery", "-A", "crucible_ui", "worker",
        "--pool", "prefork", "--concurrency", "1",
        "--queues", "control", "--hostname", hostname, "--loglevel", "INFO",
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    handle = WorkerHandle(hostname=hostname, proc=proc, log_path=log_path, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"celery worker exited with {proc.returncode}:\n{handle.logs()[-4000:]}")
        if Worker.objects.filter(hostname=hostname, online=True).exists():
            return handle
        time.sleep(0.1)
    handle.stop()
    raise RuntimeError(f"celery worker did not heart-beat within {timeout:.0f} s:\n{handle.logs()[-4000:]}")


def purge_stale_control_messages() -> int:
    """Drop what earlier tests left for a worker on the session's broker; return how many messages.

    Tests without a worker still send tasks after commit (an evaluation job on promote, the
    engine on complete, a scheduler tick on queue) and nobody consumes them; their rows are
    rolled back afterwards and the ids reused. A worker started later would take them for the
    new test's experiments and versions (a second decision for one experiment, an evaluation of
    the wrong checkpoint). Messages a killed worker held unacknowledged would come back the same way.
    """
    from crucible_ui.celery import app

    with app.connection_for_write() as conn:
        channel: Any = conn.default_channel
        dropped = int(channel.queue_purge(settings.CELERY_TASK_DEFAULT_QUEUE) or 0)
        dropped += int(channel.client.hlen(channel.unacked_key) or 0)
        channel.client.delete(channel.unacked_key, channel.unacked_index_key, channel.unacked_mutex_key)
    return dropped


@pytest.fixture
def start_celery_worker(transactional_db: Any, tmp_path: Path) -> Iterator[Callable[..., WorkerHandle]]:
    """Return a function that starts another worker (e.g. to replace a killed one); all stop at teardown.

    The control queue starts empty: what earlier tests left there is not this test's work (the
    test's own messages, sent before it starts a worker, are kept).
    """
    purge_stale_control_messages()
    started: list[WorkerHandle] = []

    def start(**extra_env: str) -> WorkerHandle:
        handle = start_worker(tmp_path=tmp_path, extra_env=extra_env)
        started.append(handle)
        return handle

    yield start
    for handle in started:
        handle.stop()


@pytest.fixture
def celery_worker(start_celery_worker: Callable[..., WorkerHandle]) -> WorkerHandle:
    """A real Celery worker on queue `control` plus its own direct queue, ready when returned."""
    return start_celery_worker()


def wait_for(
    predicate: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll predicate until it returns something truthy; fail the test after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what or predicate}")


# --- browser tests (e2e): Debian's Chromium driven by Playwright, sorted last --------------

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
CHROMIUM_MISSING = (
    f"browser tests need Chromium at {CHROMIUM}: apt-get install -y chromium (never `playwright install`)"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run e2e tests last (pytest-playwright's loop breaks async tests after it); skip them without Chromium."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is not None)  # stable: order kept otherwise
    if not CHROMIUM.exists():
        skip = pytest.mark.skip(reason=CHROMIUM_MISSING)
        for item in items:
            if item.get_closest_marker("e2e") is not None:
                item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _no_stray_database_sessions(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    """On PostgreSQL, end the connections other threads of this process left open at the end.

    Threads that answered requests or ran async consumers (the live server, asgiref's
    executor) may keep a connection of their own that Django never closes; PostgreSQL then
    refuses to drop the test database. Torn down before the database (this needs it).
    """
    yield
    if connection.vendor != "postgresql":
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


# Assertions wait for what the page shows, not for a fixed time: on a loaded 2-core CI machine a
# live frame (sent after the response by a per-process sender) can take longer than Playwright's
# 5 s default to be drawn. A page that never shows it still fails, after this wait.
BROWSER_EXPECT_TIMEOUT_MS = 15_000


@pytest.fixture(scope="session", autouse=True)
def _browser_assertions_wait_longer() -> None:
    """Give every browser test's expect() the CI-sized wait (imported lazily: Playwright is dev-only)."""
    from playwright.sync_api import expect

    expect.set_options(timeout=BROWSER_EXPECT_TIMEOUT_MS)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """Launch the system Chromium with flags that suit a container (no sandbox, no GPU, no network)."""
    return {**browser_type_launch_args, "executable_path": str(CHROMIUM), "args": CHROMIUM_ARGS}


@pytest.fixture(scope="session")
def orm_beside_playwright() -> Iterator[None]:
    """Let the ORM run beside Playwright's event loop (browser tests only; they run last).

    Playwright's sync API keeps an event loop in the test's thread; Django then refuses ORM
    calls there (the test database set-up included) unless told the thread is safe. It is:
    no coroutine touches the database. Session-wide like the database set-up.
    """
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    yield
    if previous is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous
