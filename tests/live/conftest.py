"""Fixtures of the live-view tests: people with and without the view permission, an experiment,
and websocket connections that go through the real ASGI stack (origin check, session auth)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.test import Client

from crucible_ui.asgi import application
from crucible_ui.redis_server import free_port
from experiments.models import Experiment
from experiments.services import experiment_create

Connect = Callable[..., Awaitable[WebsocketCommunicator]]


@pytest.fixture
def viewer(django_user_model: type[User]) -> User:
    """Return a person who may view experiments (and GPU stats)."""
    user = django_user_model.objects.create_user("viewer")
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="experiments", codename="view_experiment"),
        Permission.objects.get(content_type__app_label="control", codename="view_device"),
    )
    return user


@pytest.fixture
def stranger(django_user_model: type[User]) -> User:
    """Return a logged-in person without any permission."""
    return django_user_model.objects.create_user("stranger")


@pytest.fixture
def experiment() -> Experiment:
    """Return a pending digits experiment."""
    return experiment_create(name="live", recipe="digits")


def session_cookie(user: User) -> str:
    """Return a Cookie header value holding a logged-in session for the user."""
    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


@pytest.fixture
def viewer_cookie(viewer: User) -> str:
    """Return the session cookie of the viewer."""
    return session_cookie(viewer)


@pytest.fixture
def stranger_cookie(stranger: User) -> str:
    """Return the session cookie of the stranger."""
    return session_cookie(stranger)


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Open websockets through crucible_ui.asgi.application; close them all at the end."""
    opened: list[WebsocketCommunicator] = []

    async def _connect(path: str, *, cookie: str | None = None, origin: str = "http://testserver") -> Any:
        headers = [(b"origin", origin.encode()), (b"host", b"testserver")]
        if cookie:
            headers.append((b"cookie", cookie.encode()))
        communicator = WebsocketCommunicator(application, path, headers=headers)
        opened.append(communicator)
        return communicator

    yield _connect
    for communicator in opened:
        # One the server closed already has nothing left to clean.
        with contextlib.suppress(Exception):
            await communicator.disconnect()


# --- browser tests (e2e): Chromium from Debian, run last, against a real ASGI server -----------

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def asgi_server(transactional_db: Any, tmp_path: Path) -> Iterator[str]:
    """Serve the project (HTTP, websockets, static files) from Daphne on the test database; return its URL.

    pytest-django's live_server speaks WSGI only; the live view needs the websocket side.
    A separate process, so that the test's own event loop (Playwright's) stays out of it.
    """
    from tests.conftest import worker_database_url

    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": worker_database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "CELERY_RESULT_BACKEND": settings.CELERY_RESULT_BACKEND,
        # The project's settings, with the live pages routed whether or not urls.py includes them.
        "DJANGO_SETTINGS_MODULE": "tests.live.settings_live",
        "DEBUG": "true",
        "LOG_LEVEL": "WARNING",
    }
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    log_path = tmp_path / "daphne.log"
    args = [
        sys.executable,
        "manage.py",
        "runserver",
        f"127.0.0.1:{port}",
        "--noreload",
        "--insecure",
        "--skip-checks",
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/login/", timeout=5):
                break
        except urllib.error.HTTPError:
            break  # it answers; health itself is not this fixture's business
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the ASGI server did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
