"""A password change ends the account's other sessions, on pages and on the API (the session auth hash)."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from tests.security.login_helpers import PASSWORD, logged_in, post_login

NEW_PASSWORD = "another-long-passphrase-7"


@pytest.fixture
def lena(db: Any) -> User:
    """Return a staff superuser with a real password."""
    return User.objects.create_superuser("lena", password=PASSWORD)


def log_in(address: str) -> Client:
    client = Client()
    assert post_login(client, username="lena", password=PASSWORD, address=address).status_code == 302
    assert logged_in(client)
    assert client.get("/").status_code == 200
    assert client.get("/api/experiments").status_code == 200
    return client


def assert_session_ended(client: Client) -> None:
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    assert client.get("/api/experiments").status_code == 401


def test_changing_ones_password_ends_the_other_sessions_and_keeps_this_one(lena: User) -> None:
    laptop = log_in("198.51.100.1")
    phone = log_in("198.51.100.2")
    response = laptop.post(
        "/admin/password_change/",
        {"old_password": PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )
    assert response.status_code == 302, response.content[:500]
    assert_session_ended(phone)
    # The session that changed the password stays logged in.
    assert laptop.get("/").status_code == 200
    assert laptop.get("/api/experiments").status_code == 200


def test_an_administrator_setting_a_password_ends_every_session_of_that_user(lena: User) -> None:
    victim = User.objects.create_superuser("vera", password=PASSWORD)
    vera = Client()
    assert post_login(vera, username="vera", password=PASSWORD, address="198.51.100.3").status_code == 302
    assert vera.get("/api/experiments").status_code == 200
    admin = log_in("198.51.100.1")
    response = admin.post(
        f"/admin/auth/user/{victim.pk}/password/", {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD}
    )
    assert response.status_code == 302, response.content[:500]
    assert_session_ended(vera)
    assert admin.get("/").status_code == 200


def test_a_password_set_in_code_ends_the_sessions_too(lena: User) -> None:
    browser = log_in("198.51.100.1")
    lena.set_password(NEW_PASSWORD)
    lena.save()
    assert_session_ended(browser)
