"""Helpers of the login and token tests: a user with a real (Argon2) password, failures, lockout ageing."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from axes.models import AccessAttempt
from django.conf import settings
from django.test import Client

PASSWORD = "correct-horse-battery-9"
WRONG = "not-the-password-1"
_SECOND = timedelta(seconds=1)


def post_login(client: Client, *, username: str, password: str, address: str, url: str = "/login/") -> Any:
    """POST the login form from address (REMOTE_ADDR) and return the response."""
    return client.post(url, {"username": username, "password": password}, REMOTE_ADDR=address)


def logged_in(client: Client) -> bool:
    """Return True when the client's session holds a logged-in user."""
    return "_auth_user_id" in client.session


def fail_logins(count: int, *, username: str, address: str, url: str = "/login/") -> None:
    """Make count failed logins (wrong password) for username from address."""
    for _ in range(count):
        response = post_login(Client(), username=username, password=WRONG, address=address, url=url)
        assert response.status_code in (200, 429), response.status_code


def age_attempts_past_the_cooloff() -> None:
    """Move every recorded failure back by the cool-off (and a second): as if that time had passed."""
    for attempt in AccessAttempt.objects.all():
        AccessAttempt.objects.filter(pk=attempt.pk).update(
            attempt_time=attempt.attempt_time - settings.AXES_COOLOFF_TIME - _SECOND
        )
