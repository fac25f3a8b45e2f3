"""Fixtures of the live-view tests: people with and without the view permission, an experiment,
and websocket connections that go through the real ASGI stack (origin check, session auth)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.test import Client

from crucible_ui.asgi import application
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
