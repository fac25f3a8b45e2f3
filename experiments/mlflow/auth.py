"""Who calls the MLflow API: a bearer token (MLFLOW_TRACKING_TOKEN) or HTTP basic (MLFLOW_TRACKING_USERNAME/PASSWORD).

The official client sends one of the two on every request; a browser session is not accepted
here (these routes skip CSRF, so they must never act on a cookie).

Both count failures with django-axes like the login page and the JSON API: a wrong token
against the caller's address, a wrong password against the user and the address; while
locked out the caller is answered 429 (crucible_ui.lockout) before any password is hashed.

A password is verified with the project's hasher (Argon2, tens of milliseconds by design),
and the MLflow client sends it again with every metric it logs. A verified (user, password)
is therefore remembered for BASIC_AUTH_CACHE_SECONDS under an HMAC of both, together with
the user's stored hash: changing the password (or deactivating the user) ends it at once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import threading
import time
from typing import Any

from django.conf import settings
from django.contrib.auth import authenticate, get_user_model
from django.http import HttpRequest

from experiments.api.tokens import TokenLockedOut, api_token_authenticate
from experiments.mlflow.errors import MlflowError
from experiments.permissions import token_run_id

BASIC_AUTH_CACHE_SECONDS = 60.0
_CACHE_MAX_ENTRIES = 1024


class _VerifiedPasswords:
    """Remembered (user, password) checks: HMAC key -> (user id, stored hash, expiry)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[int, str, float]] = {}

    @staticmethod
    def key(username: str, password: str) -> str:
        secret = settings.SECRET_KEY.encode("utf-8")
        message = f"{username}\0{password}".encode()
        return hmac.new(secret, message, hashlib.sha256).hexdigest()

    def get(self, key: str) -> tuple[int, str] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[2] < time.monotonic():
                del self._entries[key]
                return None
            return entry[0], entry[1]

    def put(self, key: str, user_id: int, password_hash: str) -> None:
        with self._lock:
            if len(self._entries) >= _CACHE_MAX_ENTRIES:
                self._entries.clear()
            self._entries[key] = (user_id, password_hash, time.monotonic() + BASIC_AUTH_CACHE_SECONDS)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


verified_passwords = _VerifiedPasswords()


def _unauthenticated(message: str) -> MlflowError:
    return MlflowError("UNAUTHENTICATED", message)


def _locked_out() -> MlflowError:
    return MlflowError("REQUEST_LIMIT_EXCEEDED", "Too many failed logins from this address: try again later")


def _basic_user(request: HttpRequest, encoded: str) -> Any:
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise _unauthenticated(
            "Authorization: Basic credentials are not base64 of 'username:password'"
        ) from None
    username, sep, password = decoded.partition(":")
    if not sep or not username:
        raise _unauthenticated("Authorization: Basic credentials must be 'username:password'")
    key = verified_passwords.key(username, password)
    remembered = verified_passwords.get(key)
    if remembered is not None:
        user_id, password_hash = remembered
        user = get_user_model().objects.filter(pk=user_id, is_active=True).first()
        if user is not None and user.password == password_hash:
            return user
    # django-axes sees this like a login form: a locked-out caller is refused before hashing.
    user = authenticate(request, username=username, password=password)
    if getattr(request, "axes_locked_out", False):
        raise _locked_out()
    if user is None or not user.is_active:
        raise _unauthenticated("Authorization: wrong username or password")
    verified_passwords.put(key, user.pk, user.password)
    return user


def mlflow_caller(request: HttpRequest) -> Any:
    """Return the user the request's Authorization header names; raise UNAUTHENTICATED (401) or 429."""
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    if not header:
        raise _unauthenticated(
            "Authentication required: set MLFLOW_TRACKING_TOKEN to an API token "
            "(manage.py api_token <user>), or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    if scheme.lower() == "bearer" and credentials.strip():
        try:
            user = api_token_authenticate(request=request, raw=credentials.strip())
        except TokenLockedOut:
            raise _locked_out() from None
        if user is None:
            raise _unauthenticated("Authorization: invalid or revoked API token")
        if token_run_id(user) is not None:
            # A run token may write to its one run through /api/runs only: the MLflow API names
            # runs and experiments freely, and a run token speaks for nothing else.
            raise MlflowError(
                "PERMISSION_DENIED",
                "This is a run token (from POST /api/runs): it writes to its own run only. "
                "The MLflow API takes a user's token (manage.py api_token <user>) or a login.",
            )
        return user
    if scheme.lower() == "basic" and credentials.strip():
        return _basic_user(request, credentials)
    raise _unauthenticated("Authorization: expected 'Bearer <token>' or 'Basic <credentials>'")
