"""Bearer tokens for the JSON API: create one (shown once), check one; only the SHA-256 is stored."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Any

from django.db.models import Q
from django.utils import timezone

from experiments.models import ApiToken

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
    """Return the active user a raw token belongs to (and note its use), or None."""
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
