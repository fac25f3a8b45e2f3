"""A real Daphne serving the project on the test database, for tests that need a server of their own.

Tests that speak to the web over the network (the official MLflow client, a websocket client that
rides out a Redis outage) start one here: same settings as `make run`'s web process, the database
the test writes to, and its own process group so that everything it started stops with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.common import wait_for_port
from crucible_ui.redis_server import free_port
from tests.conftest import worker_database_url

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def daphne_server(log_dir: Path, **extra_env: str) -> Iterator[int]:
    """Serve the project from Daphne until the block ends; yield its port (output in log_dir/daphne.log)."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": worker_database_url(),
        "DJANGO_SETTINGS_MODULE": "crucible_ui.settings",
        "DEBUG": "true",
        "LOG_LEVEL": "WARNING",
        **extra_env,
    }
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    log_path = log_dir / "daphne.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                "crucible_ui.asgi:application",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_port(port, proc=proc, what="daphne", log=log_path)
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
