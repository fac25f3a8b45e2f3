"""Bearer tokens for the JSON API: a user's token (created once, only its SHA-256 stored), or a run token.

Run tokens (`crr_…`, experiments/runs/tokens.py) are signed, not stored, and speak for one live run.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Any

from axes.handlers.proxy import AxesProxyHandler
from django.contrib.auth.signals import user_login_failed
from django.db.models import Q
from django.http import HttpRequest
from django.utils import timezone

from experiments.models import ApiToken
from experiments.runs.tokens import RUN_TOKEN_PREFIX, run_token_user, run_token_verify

# Recognisable in logs and secret scanners; the random part carries 256 bits.
TOKEN_PREFIX = "cru_"
# last_used_at is a hint for people, not an audit trail: writing it on every request
# would turn each API read into a write (and contend with the metric writer on SQLite).
LAST_USED_RESOLUTION = timedelta(minutes=1)


def token_hash(raw: str) -> str:
    """Return the hex SHA-256 under which a raw token is stored."""
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def api_token_create(*, user: Any, name: str) -> tuple[ApiToken, str]:
    """Create a token for user and return it with the raw secret, which is never stored."""
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user,
        name=name,
        token_sha256=token_hash(raw),
        prefix=raw[: ApiToken._meta.get_field("prefix").max_length],
    )
    return token, raw


def api_token_user(*, raw: str) -> Any | None:
    """Return the active user a raw token belongs to (and note its use), or None.

    A run token answers its run's caller (experiments.runs.tokens.RunTokenUser) while the run is
    live: it carries the run's id (experiments.permissions.token_run_id), and every route but the
    run's own refuses it.
    """
    if raw.startswith(RUN_TOKEN_PREFIX):
        return run_token_user(raw)
    if not raw or len(raw) > 200:
        return None
    token = ApiToken.objects.select_related("user").filter(token_sha256=token_hash(raw)).first()
    if token is None or not token.user.is_active:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).filter(
            Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_RESOLUTION)
        ).update(last_used_at=now)
    return token.user


class TokenLockedOut(Exception):
    """Too many wrong tokens came from this address: it is refused until the lockout ends."""


# A token names no user: axes counts its failures against the caller's address only.
_TOKEN_CREDENTIALS: dict[str, Any] = {"username": None}


def api_token_authenticate(*, request: HttpRequest, raw: str) -> Any | None:
    """Return the token's user, or None for a wrong token, which counts as a failed login.

    Raises TokenLockedOut while the caller's address is locked out (django-axes), before the
    token is looked up, and when this failure is the one that locks it out. The request is
    flagged (axes_locked_out) so that AxesMiddleware answers with the lockout response.
    """
    if not AxesProxyHandler.is_allowed(request, _TOKEN_CREDENTIALS):
        request.axes_locked_out = True  # type: ignore[attr-defined]
        request.axes_credentials = _TOKEN_CREDENTIALS  # type: ignore[attr-defined]
        raise TokenLockedOut
    user = api_token_user(raw=raw)
    if user is None and run_token_verify(raw) is not None:
        # Our own signature on a run that has ended: a late batch or a retried finish, not a
        # guess. Refused (401) without counting toward the lockout of the client's address.
        return None
    if user is None:
        # The signal Django sends for a failed password: axes records it (and any other listener).
        user_login_failed.send(sender=__name__, credentials=_TOKEN_CREDENTIALS, request=request)
        if getattr(request, "axes_locked_out", False):
            raise TokenLockedOut
    return user
