"""Passwords: Argon2 for new ones, older hashes upgraded at login, weak ones refused with a field error."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import User
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.test import Client

from tests.security.login_helpers import PASSWORD, logged_in, post_login


@pytest.mark.django_db
def test_new_passwords_are_hashed_with_argon2() -> None:
    user = User.objects.create_user("ada", password=PASSWORD)
    assert user.password.startswith("argon2$argon2id$")
    assert user.check_password(PASSWORD) and not user.check_password(PASSWORD + "x")


@pytest.mark.django_db
def test_an_older_pbkdf2_hash_still_logs_in_and_is_upgraded_to_argon2() -> None:
    user = User.objects.create_user("ada")
    User.objects.filter(pk=user.pk).update(password=make_password(PASSWORD, hasher="pbkdf2_sha256"))
    client = Client()
    assert post_login(client, username="ada", password=PASSWORD, address="198.51.100.1").status_code == 302
    assert logged_in(client)
    user.refresh_from_db()
    assert user.password.startswith("argon2$")


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("password123", "too common"),
        ("84736251940", "entirely numeric"),
        ("k3#x", "too short"),
        ("ada-lovelace", "too similar"),
    ],
)
@pytest.mark.django_db
def test_weak_passwords_are_refused(password: str, reason: str) -> None:
    user = User(username="ada-lovelace")
    with pytest.raises(ValidationError) as refused:
        validate_password(password, user=user)
    assert any(reason in message for message in refused.value.messages), refused.value.messages


@pytest.mark.django_db
def test_changing_to_a_common_password_is_refused_with_a_field_error_and_changes_nothing(
    admin_client: Any,
) -> None:
    admin = User.objects.get(username="admin")
    before = admin.password
    response = admin_client.post(
        "/admin/password_change/",
        {"old_password": "password", "new_password1": "qwertyuiop", "new_password2": "qwertyuiop"},
    )
    assert response.status_code == 200
    assert "This password is too common." in response.context["form"].errors["new_password2"]
    admin.refresh_from_db()
    assert admin.password == before
