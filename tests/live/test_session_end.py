"""An open live socket closes (4401) within 5 s once its session ends: logout, deactivation, new password."""

from __future__ import annotations

import time

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client

from experiments.live.consumers import CLOSE_UNAUTHENTICATED
from experiments.models import Experiment
from tests.live.conftest import Connect

pytestmark = pytest.mark.django_db(transaction=True)

# What the page may wait, at most, between the end of a session and the close of its socket.
CLOSE_WITHIN_SECONDS = 5.0


def logged_in(user: User) -> tuple[Client, str]:
    """Return a browser (test client) logged in as user, and its Cookie header."""
    client = Client()
    client.force_login(user)
    return client, f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


async def open_socket(connect: Connect, experiment: Experiment, cookie: str) -> WebsocketCommunicator:
    communicator = await connect(f"/ws/experiments/{experiment.pk}/", cookie=cookie)
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    # Accepted and not refused: a ping is answered.
    await communicator.send_json_to({"type": "ping"})
    assert (await communicator.receive_json_from(timeout=5))["type"] == "pong"
    return communicator


async def closed_with(communicator: WebsocketCommunicator) -> tuple[int, float]:
    """Wait (bounded) for the server to close the socket; return the code and how long it took."""
    started = time.monotonic()
    message = await communicator.receive_output(timeout=CLOSE_WITHIN_SECONDS)
    assert message["type"] == "websocket.close", message
    return int(message.get("code", 1000)), time.monotonic() - started


async def test_logging_out_closes_that_sessions_socket_and_only_that_one(
    connect: Connect, experiment: Experiment, viewer: User
) -> None:
    browser, cookie = await sync_to_async(logged_in)(viewer)
    _, other_cookie = await sync_to_async(logged_in)(viewer)
    socket = await open_socket(connect, experiment, cookie)
    other_socket = await open_socket(connect, experiment, other_cookie)

    response = await sync_to_async(browser.post)("/logout/")
    assert response.status_code in (200, 302)

    code, _ = await closed_with(socket)
    assert code == CLOSE_UNAUTHENTICATED
    # The same person's other browser is still logged in: its socket stays and answers.
    await other_socket.send_json_to({"type": "ping", "id": 7})
    assert await other_socket.receive_json_from(timeout=5) == {"type": "pong", "id": 7}


async def test_deactivating_the_user_closes_the_socket(
    connect: Connect, experiment: Experiment, viewer: User
) -> None:
    _, cookie = await sync_to_async(logged_in)(viewer)
    socket = await open_socket(connect, experiment, cookie)
    # A bulk update sends no signal: the check must not depend on one.
    await User.objects.filter(pk=viewer.pk).aupdate(is_active=False)
    code, _ = await closed_with(socket)
    assert code == CLOSE_UNAUTHENTICATED


async def test_changing_the_password_closes_the_socket(
    connect: Connect, experiment: Experiment, viewer: User
) -> None:
    _, cookie = await sync_to_async(logged_in)(viewer)
    socket = await open_socket(connect, experiment, cookie)

    def change_password() -> None:
        user = User.objects.get(pk=viewer.pk)
        user.set_password("a new passphrase 42")
        user.save()

    await sync_to_async(change_password)()
    code, _ = await closed_with(socket)
    assert code == CLOSE_UNAUTHENTICATED


async def test_a_socket_whose_session_lives_on_stays_open(
    connect: Connect, experiment: Experiment, viewer: User
) -> None:
    _, cookie = await sync_to_async(logged_in)(viewer)
    socket = await open_socket(connect, experiment, cookie)
    # Longer than two session checks: nothing closes it.
    assert await socket.receive_nothing(timeout=CLOSE_WITHIN_SECONDS)
    await socket.send_json_to({"type": "ping", "id": 1})
    assert await socket.receive_json_from(timeout=5) == {"type": "pong", "id": 1}
