"""How API callers authenticate: a bearer token, or the browser session (with CSRF for writes)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest
from ninja.errors import AuthenticationError, HttpError
from ninja.security import APIKeyCookie, HttpBearer
from ninja.utils import check_csrf

from experiments.api.tokens import TokenLockedOut, api_token_authenticate


class TokenAuth(HttpBearer):
    """`Authorization: Bearer <token>`; tokens come from `manage.py api_token <username>`."""

    def authenticate(self, request: HttpRequest, token: str) -> Any | None:
        """Return the token's user; a wrong token is refused outright (401), not passed on.

        Wrong tokens count as failed logins of the caller's address: once locked out, it is
        answered 429 (by AxesMiddleware, see crucible_ui.lockout) without looking at the token.
        """
        try:
            user = api_token_authenticate(request=request, raw=token.strip())
        except TokenLockedOut:
            raise HttpError(429, "Too many failed logins from this address: try again later") from None
        if user is None:
            # Falling through to session auth would answer a wrong token with a CSRF
            # failure (403) on writes: say plainly that the token is the problem.
            raise AuthenticationError(message="Invalid or revoked API token")
        request.user = user
        return user


class SessionAuth(APIKeyCookie):
    """The logged-in browser session; unsafe methods must carry the CSRF token."""

    param_name = settings.SESSION_COOKIE_NAME

    def __init__(self) -> None:
        super().__init__(csrf=True)

    def _get_key(self, request: HttpRequest) -> str | None:
        # ninja checks CSRF before it knows whether anyone is logged in; an anonymous
        # caller should hear 401 (log in), not 403 (CSRF), so look at the user first.
        if not request.user.is_authenticated:
            return None
        if not getattr(request, "_ninja_csrf_exempt", False) and check_csrf(request):
            raise HttpError(403, "CSRF check failed: send the X-CSRFToken header with the csrftoken cookie")
        return request.COOKIES.get(self.param_name)

    def authenticate(self, request: HttpRequest, key: str | None) -> Any | None:
        """Return the session's user, or None when nobody is logged in."""
        return request.user if request.user.is_authenticated else None


# Token first: a request that names a token is judged by it alone.
API_AUTH = [TokenAuth(), SessionAuth()]
