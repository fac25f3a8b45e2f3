"""Login throttling (django-axes): the login page and the admin login lock out by user and by address."""

from __future__ import annotations

from typing import Any

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client

from tests.security.login_helpers import (
    PASSWORD,
    WRONG,
    age_attempts_past_the_cooloff,
    fail_logins,
    logged_in,
    post_login,
)

LIMIT = settings.AXES_FAILURE_LIMIT


@pytest.fixture
def lena(db: Any) -> User:
    """Return a staff member with a real password (hashed with the production hasher)."""
    return User.objects.create_user("lena", password=PASSWORD, is_staff=True, is_superuser=True)


def assert_locked_out_page(response: Any) -> None:
    assert response.status_code == 429
    assert int(response["Retry-After"]) == int(settings.AXES_COOLOFF_TIME.total_seconds())
    assert "Too many failed logins" in response.content.decode()


def test_failures_below_the_limit_still_let_the_right_password_in(lena: User) -> None:
    fail_logins(LIMIT - 1, username="lena", address="198.51.100.1")
    client = Client()
    response = post_login(client, username="lena", password=PASSWORD, address="198.51.100.1")
    assert response.status_code == 302 and logged_in(client)


def test_a_user_is_locked_out_after_the_limit_even_from_fresh_addresses(lena: User) -> None:
    # Each guess from another address: only the per-user count can stop this.
    for n in range(LIMIT):
        post_login(Client(), username="lena", password=WRONG, address=f"198.51.100.{n + 1}")
    client = Client()
    response = post_login(client, username="lena", password=PASSWORD, address="198.51.100.200")
    assert_locked_out_page(response)
    assert not logged_in(client)


def test_the_guess_that_reaches_the_limit_is_answered_with_the_lockout(lena: User) -> None:
    fail_logins(LIMIT - 1, username="lena", address="198.51.100.1")
    response = post_login(Client(), username="lena", password=WRONG, address="198.51.100.1")
    assert_locked_out_page(response)


def test_an_address_is_locked_out_after_the_limit_across_usernames(lena: User) -> None:
    for n in range(LIMIT):
        post_login(Client(), username=f"guess{n}", password=WRONG, address="203.0.113.7")
    locked = Client()
    assert_locked_out_page(post_login(locked, username="lena", password=PASSWORD, address="203.0.113.7"))
    assert not logged_in(locked)
    # lena herself has no failures: from another address she logs in.
    other = Client()
    assert post_login(other, username="lena", password=PASSWORD, address="203.0.113.8").status_code == 302
    assert logged_in(other)


def test_the_admin_login_is_throttled_and_shares_the_count_with_the_login_page(lena: User) -> None:
    fail_logins(LIMIT, username="lena", address="198.51.100.1", url="/admin/login/")
    admin = Client()
    response = post_login(
        admin, username="lena", password=PASSWORD, address="198.51.100.9", url="/admin/login/"
    )
    assert_locked_out_page(response)
    assert not logged_in(admin)
    page = Client()
    assert_locked_out_page(post_login(page, username="lena", password=PASSWORD, address="198.51.100.9"))


def test_attempts_during_a_lockout_do_not_extend_it(lena: User) -> None:
    fail_logins(LIMIT, username="lena", address="198.51.100.1")
    before = list(AccessAttempt.objects.values_list("pk", "attempt_time", "failures_since_start"))
    fail_logins(3, username="lena", address="198.51.100.1")
    assert list(AccessAttempt.objects.values_list("pk", "attempt_time", "failures_since_start")) == before


def test_a_lockout_ends_after_the_cooloff(lena: User) -> None:
    fail_logins(LIMIT, username="lena", address="198.51.100.1")
    assert_locked_out_page(post_login(Client(), username="lena", password=PASSWORD, address="198.51.100.1"))
    age_attempts_past_the_cooloff()
    client = Client()
    assert post_login(client, username="lena", password=PASSWORD, address="198.51.100.1").status_code == 302
    assert logged_in(client)


def test_the_limit_and_the_cooloff_come_from_the_axes_settings(lena: User, settings: Any) -> None:
    settings.AXES_FAILURE_LIMIT = 2
    fail_logins(2, username="lena", address="198.51.100.1")
    response = post_login(Client(), username="lena", password=PASSWORD, address="198.51.100.1")
    assert response.status_code == 429
    assert int(response["Retry-After"]) == int(settings.AXES_COOLOFF_TIME.total_seconds())


def test_an_administrator_can_lift_a_lockout(lena: User) -> None:
    fail_logins(LIMIT, username="lena", address="198.51.100.1")
    call_command("axes_reset_username", "lena")
    call_command("axes_reset_ip", "198.51.100.1")
    client = Client()
    assert post_login(client, username="lena", password=PASSWORD, address="198.51.100.1").status_code == 302
    assert logged_in(client)


def test_failed_logins_are_recorded_with_user_and_address(lena: User) -> None:
    fail_logins(2, username="lena", address="198.51.100.1")
    attempt = AccessAttempt.objects.get()
    assert (attempt.username, attempt.ip_address, attempt.failures_since_start) == ("lena", "198.51.100.1", 2)
    # The password a guesser typed is never stored.
    assert WRONG not in attempt.post_data


def test_a_spoofed_forwarded_for_header_does_not_escape_the_address_lockout(lena: User) -> None:
    for n in range(LIMIT):
        Client().post(
            "/login/",
            {"username": f"guess{n}", "password": WRONG},
            REMOTE_ADDR="203.0.113.7",
            HTTP_X_FORWARDED_FOR=f"10.0.0.{n}",
        )
    response = Client().post(
        "/login/",
        {"username": "lena", "password": PASSWORD},
        REMOTE_ADDR="203.0.113.7",
        HTTP_X_FORWARDED_FOR="10.0.0.99",
    )
    assert response.status_code == 429
