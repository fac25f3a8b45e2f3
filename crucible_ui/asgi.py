"""ASGI entry point: HTTP through Django, websockets through Channels with session auth.

Websockets pass a same-origin check first (scheme, host AND port, as Django's CSRF check
compares them): a page served from another port of the same host, or over the other
scheme, is another origin and must not open a socket with the user's session cookie.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "crucible_ui.settings")
# Django must be set up before the consumers (and their models) are imported.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import WebsocketDenier  # noqa: E402
from channels.sessions import SessionMiddlewareStack  # noqa: E402
from django.conf import settings  # noqa: E402
from django.http.request import split_domain_port, validate_host  # noqa: E402

from crucible_ui.routing import websocket_urlpatterns  # noqa: E402

DEFAULT_PORTS = {"http": 80, "https": 443}
Origin = tuple[str, str, int]


def parse_origin(value: str) -> Origin | None:
    """Return (scheme, host, port) of an http(s) origin, the port made explicit; None if malformed."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:  # a port out of range or not a number
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in DEFAULT_PORTS or not host:
        return None
    return scheme, host, port if port is not None else DEFAULT_PORTS[scheme]


def origin_allowed(*, origin: str | None, scheme: str, host_header: str | None) -> bool:
    """Return whether a websocket from this Origin may open on this server.

    Allowed: the server's own origin (the scheme the socket came in on, the Host header's
    host and port, the host being one of ALLOWED_HOSTS), or an entry of
    CSRF_TRUSTED_ORIGINS (e.g. a TLS proxy's public origin; "*.example.com" entries match
    subdomains on the same scheme and port). No Origin header: refused (browsers always
    send one on websockets).
    """
    parsed = parse_origin(origin) if origin else None
    if parsed is None:
        return False
    if host_header:
        own_scheme = "https" if scheme in ("wss", "https") else "http"
        domain, _port = split_domain_port(host_header)
        allowed_hosts = settings.ALLOWED_HOSTS
        if not allowed_hosts and settings.DEBUG:
            allowed_hosts = [".localhost", "127.0.0.1", "[::1]"]
        if domain and validate_host(domain, allowed_hosts):
            own = parse_origin(f"{own_scheme}://{host_header}")
            if own is not None and own == parsed:
                return True
    for trusted in settings.CSRF_TRUSTED_ORIGINS:
        wildcard = "://*." in trusted
        entry = parse_origin(trusted.replace("://*.", "://", 1) if wildcard else trusted)
        if entry is None or entry[0] != parsed[0] or entry[2] != parsed[2]:
            continue
        if parsed[1] == entry[1] or (wildcard and parsed[1].endswith("." + entry[1])):
            return True
    return False


class SameOriginValidator:
    """Refuse (HTTP 403 at the handshake) a websocket whose Origin is not this site's own or a trusted one."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        headers = dict(scope.get("headers") or [])
        origin = headers.get(b"origin")
        host = headers.get(b"host")
        if origin_allowed(
            origin=origin.decode("latin-1") if origin is not None else None,
            scheme=str(scope.get("scheme") or "ws"),
            host_header=host.decode("latin-1") if host is not None else None,
        ):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # The session only: the consumers resolve the user in the same database hop as their
        # permission and object checks (channels' AuthMiddleware would add a hop per connection).
        "websocket": SameOriginValidator(SessionMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
