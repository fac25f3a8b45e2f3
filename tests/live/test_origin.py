"""The websocket Origin check: scheme, host AND port must be the site's own (or a trusted origin)."""

from __future__ import annotations

from typing import Any

import pytest
from channels.testing import WebsocketCommunicator

from crucible_ui.asgi import application, origin_allowed
from experiments.models import Experiment

pytestmark = pytest.mark.django_db(transaction=True)


async def opens(path: str, *, origin: str | None, host: str, cookie: str, scheme: str = "ws") -> bool:
    """Return whether a websocket with these headers gets through the handshake."""
    headers = [(b"host", host.encode()), (b"cookie", cookie.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    communicator = WebsocketCommunicator(application, path, headers=headers)
    communicator.scope["scheme"] = scheme
    connected, _ = await communicator.connect(timeout=5)
    await communicator.disconnect()
    return bool(connected)


async def test_the_sites_own_origin_with_its_port_opens_a_socket(
    experiment: Experiment, viewer_cookie: str
) -> None:
    path = f"/ws/experiments/{experiment.pk}/"
    assert await opens(path, origin="http://testserver:8000", host="testserver:8000", cookie=viewer_cookie)
    assert await opens(
        path, origin="https://testserver", host="testserver", cookie=viewer_cookie, scheme="wss"
    )


async def test_another_port_of_the_same_host_is_refused(experiment: Experiment, viewer_cookie: str) -> None:
    path = f"/ws/experiments/{experiment.pk}/"
    # A page served by another program on the same host (port 8001) is another origin.
    assert not await opens(
        path, origin="http://testserver:8001", host="testserver:8000", cookie=viewer_cookie
    )
    assert not await opens(path, origin="http://testserver:8000", host="testserver", cookie=viewer_cookie)


async def test_another_scheme_or_no_origin_is_refused(experiment: Experiment, viewer_cookie: str) -> None:
    path = f"/ws/experiments/{experiment.pk}/"
    assert not await opens(path, origin="https://testserver", host="testserver", cookie=viewer_cookie)
    assert not await opens(path, origin=None, host="testserver", cookie=viewer_cookie)
    assert not await opens(path, origin="null", host="testserver", cookie=viewer_cookie)


def test_a_host_outside_allowed_hosts_is_refused_even_from_its_own_origin(settings: Any) -> None:
    settings.ALLOWED_HOSTS = ["dash.example"]
    assert origin_allowed(origin="http://dash.example:8000", scheme="ws", host_header="dash.example:8000")
    assert not origin_allowed(origin="http://evil.example:8000", scheme="ws", host_header="evil.example:8000")


def test_a_trusted_origin_matches_on_scheme_host_and_port(settings: Any) -> None:
    # Behind a TLS proxy the socket arrives as ws:// on an internal host; the page's origin is public.
    settings.CSRF_TRUSTED_ORIGINS = ["https://dash.example.com", "https://*.lab.example"]
    internal = {"scheme": "ws", "host_header": "10.0.0.5:8000"}
    assert origin_allowed(origin="https://dash.example.com", **internal)
    assert origin_allowed(origin="https://dash.example.com:443", **internal)
    assert not origin_allowed(origin="https://dash.example.com:8443", **internal)
    assert not origin_allowed(origin="http://dash.example.com", **internal)
    assert origin_allowed(origin="https://gpu1.lab.example", **internal)
    assert not origin_allowed(origin="https://lab.example.evil.com", **internal)
    assert not origin_allowed(origin="https://gpu1.lab.example:444", **internal)
