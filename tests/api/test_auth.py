"""Who may call the API: sessions (with CSRF for writes), bearer tokens, nobody else."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client

from experiments.api.tokens import token_hash
from experiments.models import ApiToken, Experiment
from tests.api.conftest import TokenFor, post_json

NEW = {"name": "from the api", "recipe": "digits"}


@pytest.mark.django_db
def test_anonymous_callers_get_401_json_on_reads_and_writes() -> None:
    for response in (Client().get("/api/experiments"), post_json(Client(), "/api/experiments", NEW)):
        assert response.status_code == 401
        assert response["Content-Type"].startswith("application/json")
        assert "Bearer" in response.json()["detail"]
    assert not Experiment.objects.exists()


def test_a_bearer_token_authenticates_reads_and_writes(operator: User, token_for: TokenFor) -> None:
    headers: dict[str, Any] = {"HTTP_AUTHORIZATION": f"Bearer {token_for(operator)}"}
    assert Client().get("/api/experiments", **headers).status_code == 200
    # No session, no CSRF cookie: a token client is not a browser and needs neither.
    response = post_json(Client(enforce_csrf_checks=True), "/api/experiments", NEW, **headers)
    assert response.status_code == 201
    assert response.json()["owner"] == "olga"
    assert ApiToken.objects.get(user=operator).last_used_at is not None


def test_a_wrong_token_is_refused_with_401_even_on_writes(operator: User, token_for: TokenFor) -> None:
    raw = token_for(operator)
    for bad in (raw + "x", "cru_guess", ""):
        response = post_json(Client(), "/api/experiments", NEW, HTTP_AUTHORIZATION=f"Bearer {bad}")
        assert response.status_code == 401, bad
    assert not Experiment.objects.exists()


def test_the_token_of_a_deactivated_user_is_refused(operator: User, token_for: TokenFor) -> None:
    raw = token_for(operator)
    operator.is_active = False
    operator.save()
    assert Client().get("/api/experiments", HTTP_AUTHORIZATION=f"Bearer {raw}").status_code == 401


def test_tokens_are_stored_only_as_their_sha256(operator: User, token_for: TokenFor) -> None:
    raw = token_for(operator)
    token = ApiToken.objects.get(user=operator)
    assert token.token_sha256 == token_hash(raw)
    assert raw not in (token.token_sha256, token.name) and raw.startswith(token.prefix)


def test_session_writes_without_the_csrf_token_are_refused(operator: User) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    response = post_json(client, "/api/experiments", NEW)
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]
    assert not Experiment.objects.exists()
    # Reads need no CSRF token.
    assert client.get("/api/experiments").status_code == 200


def test_session_writes_with_the_csrf_token_pass(operator: User) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    client.get("/api/docs")  # the docs page sets the csrftoken cookie, as a browser page would
    csrf = client.cookies["csrftoken"].value
    response = post_json(client, "/api/experiments", NEW, HTTP_X_CSRFTOKEN=csrf)
    assert response.status_code == 201


def test_the_api_token_command_prints_a_working_token_once(operator: User) -> None:
    out = StringIO()
    call_command("api_token", "olga", "--name", "ci", stdout=out, stderr=StringIO())
    raw = out.getvalue().strip()
    assert ApiToken.objects.get(user=operator, name="ci").token_sha256 == token_hash(raw)
    assert Client().get("/api/experiments", HTTP_AUTHORIZATION=f"Bearer {raw}").status_code == 200

    listing = StringIO()
    call_command("api_token", "olga", "--list", stdout=listing)
    assert "ci" in listing.getvalue() and raw not in listing.getvalue()

    call_command("api_token", "olga", "--revoke", raw[:8], stdout=StringIO())
    assert Client().get("/api/experiments", HTTP_AUTHORIZATION=f"Bearer {raw}").status_code == 401


@pytest.mark.django_db
def test_the_api_token_command_refuses_an_unknown_user() -> None:
    with pytest.raises(CommandError, match="No user"):
        call_command("api_token", "nobody", stdout=StringIO())
