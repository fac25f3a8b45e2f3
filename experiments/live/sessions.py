"""Which browser sessions behind open websockets have ended (logout, expiry, deactivation, new password).

An open socket outlives the HTTP request that authenticated it. The consumers of a
process ask here every few seconds, for all their sockets at once (two queries whatever
their number), and close the ones whose session is over.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.base import SessionBase
from django.utils import timezone
from django.utils.crypto import constant_time_compare

SessionRef = tuple[str, int]  # (session key, user id)


def _session_data(keys: set[str]) -> dict[str, dict[str, Any]]:
    """Return the decoded data of the sessions among keys that still exist and have not expired."""
    engine = import_module(settings.SESSION_ENGINE)
    store_class: type[SessionBase] = engine.SessionStore
    get_model = getattr(store_class, "get_model_class", None)
    if get_model is not None and not settings.SESSION_ENGINE.endswith("cached_db"):
        # Database sessions: one query for all of them.
        store = store_class()
        rows = get_model().objects.filter(session_key__in=keys, expire_date__gt=timezone.now())
        return {row.session_key: store.decode(row.session_data) for row in rows}
    data: dict[str, dict[str, Any]] = {}
    for key in keys:
        store = store_class(key)
        loaded = store.load()
        # load() gives an empty dict (and a new key) for a missing or expired session.
        if loaded and store.session_key == key:
            data[key] = loaded
    return data


def _hash_matches(user: Any, stored: str | None) -> bool:
    """Return whether a session's auth hash is still the user's (it changes with the password)."""
    if not stored:
        return False
    if constant_time_compare(stored, user.get_session_auth_hash()):
        return True
    # Sessions made before a SECRET_KEY rotation stay valid, as django.contrib.auth.get_user allows.
    return any(
        constant_time_compare(stored, user._get_session_auth_hash(secret=key))
        for key in getattr(settings, "SECRET_KEY_FALLBACKS", [])
    )


def sessions_ended(*, sessions: Iterable[SessionRef]) -> set[SessionRef]:
    """Return those (session key, user id) pairs whose session no longer logs that user in.

    Ended: the session was deleted (logout) or expired, names another user, its user is
    gone or inactive, or the user's password changed since it was made.
    """
    wanted = set(sessions)
    if not wanted:
        return set()
    data = _session_data({key for key, _ in wanted})
    users = {
        user.pk: user for user in get_user_model()._default_manager.filter(pk__in={uid for _, uid in wanted})
    }
    ended: set[SessionRef] = set()
    for key, user_id in wanted:
        session = data.get(key)
        user = users.get(user_id)
        if (
            session is None
            or user is None
            or str(session.get(SESSION_KEY)) != str(user_id)
            or not getattr(user, "is_active", True)
            or not _hash_matches(user, session.get(HASH_SESSION_KEY))
        ):
            ended.add((key, user_id))
    return ended
