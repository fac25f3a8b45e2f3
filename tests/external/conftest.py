"""Fixtures of the external-run tests: a Daphne serving the project that a test may kill and start again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.test import Client

from bench.common import wait_for_port
from crucible_ui.redis_server import free_port
from tests.conftest import worker_database_url

ROOT = Path(__file__).resolve().parents[2]


class WebProcess:
    """Daphne serving crucible_ui.asgi on the test database and the session's Redis, on a fixed port."""

    def __init__(self, log_dir: Path, **extra_env: str) -> None:
        self.port = free_port()
        self.log_dir = log_dir
        self.starts = 0
        self.env = {
            **os.environ,
            "DATABASE_URL": worker_database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
            "CELERY_RESULT_BACKEND": settings.CELERY_RESULT_BACKEND,
            "DJANGO_SETTINGS_MODULE": "crucible_ui.settings",
            "DEBUG": "true",
            "LOG_LEVEL": "WARNING",
            **extra_env,
        }
        self.env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start Daphne and return once it accepts connections."""
        self.starts += 1
        log_path = self.log_dir / f"daphne-{self.starts}.log"
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "daphne",
                    "-b",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "crucible_ui.asgi:application",
                ],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_port(self.port, proc=self.proc, what="daphne", log=log_path)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop the process (SIGKILL: as if the host lost it) and wait for it to be gone."""
        if self.proc is None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-3000:] for p in sorted(self.log_dir.glob("daphne-*.log"))
        )


@pytest.fixture
def web(transactional_db: Any, tmp_path: Path) -> Iterator[WebProcess]:
    """A running Daphne on the test database; stopped at teardown."""
    process = WebProcess(tmp_path)
    process.start()
    try:
        yield process
    finally:
        process.kill(signal.SIGTERM)


@pytest.fixture
def researcher(transactional_db: Any) -> User:
    """Return a person who may create, start and view experiments."""
    user = User.objects.create_user("rita")
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="experiments",
            codename__in=("add_experiment", "view_experiment", "queue_experiment", "cancel_experiment"),
        )
    )
    return user


def session_cookies(user: User) -> dict[str, str]:
    """Return the cookies of a logged-in session of the user."""
    client = Client()
    client.force_login(user)
    return {settings.SESSION_COOKIE_NAME: client.cookies[settings.SESSION_COOKIE_NAME].value}
