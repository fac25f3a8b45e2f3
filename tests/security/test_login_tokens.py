"""Bearer tokens (API and serving): wrong tokens count as failed logins of the address; JSON 429 when locked."""

from __future__ import annotations

from typing import Any

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.test import Client

from experiments.api.tokens import api_token_create
from tests.security.login_helpers import WRONG, age_attempts_past_the_cooloff, fail_logins

LIMIT = settings.AXES_FAILURE_LIMIT
ATTACKER = "203.0.113.50"
OTHER = "203.0.113.51"


@pytest.fixture
def token(db: Any) -> str:
    """Return the raw token of a user who may read experiments and use served models."""
    user = User.objects.create_user("tom")
    user.user_permissions.add(Permission.objects.get(codename="view_experiment"))
    return api_token_create(user=user, name="tests")[1]


def api_get(raw: str, *, address: str) -> Any:
    return Client().get("/api/experiments", HTTP_AUTHORIZATION=f"Bearer {raw}", REMOTE_ADDR=address)


def serve_post(raw: str, *, address: str) -> Any:
    return Client().post(
        "/serve/digits/predict",
        {"features": [0.0] * 64},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {raw}",
        REMOTE_ADDR=address,
    )


def assert_json_lockout(response: Any) -> None:
    assert response.status_code == 429
    assert response["Content-Type"].startswith("application/json")
    assert "too many" in response.json()["detail"].lower()
    assert int(response["Retry-After"]) == int(settings.AXES_COOLOFF_TIME.total_seconds())


def test_wrong_tokens_below_the_limit_are_401_and_the_right_one_still_works(token: str) -> None:
    for n in range(LIMIT - 1):
        assert api_get(f"cru_guess{n}", address=ATTACKER).status_code == 401
    assert api_get(token, address=ATTACKER).status_code == 200


def test_an_address_sending_wrong_tokens_is_locked_out_with_a_json_429(token: str) -> None:
    for n in range(LIMIT - 1):
        api_get(f"cru_guess{n}", address=ATTACKER)
    assert_json_lockout(api_get("cru_guess-last", address=ATTACKER))
    # While locked, even the right token is refused: the lockout stops guessing, not just wrong guesses.
    assert_json_lockout(api_get(token, address=ATTACKER))
    # Other addresses are not affected.
    assert api_get(token, address=OTHER).status_code == 200
    attempt = AccessAttempt.objects.get()
    assert (attempt.username, attempt.ip_address, attempt.failures_since_start) == (None, ATTACKER, LIMIT)


def test_serving_endpoints_count_wrong_tokens_too(token: str) -> None:
    for n in range(LIMIT - 1):
        assert serve_post(f"cru_guess{n}", address=ATTACKER).status_code == 401
    assert_json_lockout(serve_post("cru_guess-last", address=ATTACKER))
    assert_json_lockout(serve_post(token, address=ATTACKER))
    # The API and serving share the count: the address is locked out of both.
    assert_json_lockout(api_get(token, address=ATTACKER))


def test_wrong_passwords_and_wrong_tokens_from_one_address_add_up(token: str) -> None:
    fail_logins(LIMIT - 1, username="someone", address=ATTACKER)
    assert_json_lockout(api_get("cru_guess", address=ATTACKER))


def test_a_token_lockout_ends_after_the_cooloff(token: str) -> None:
    for n in range(LIMIT):
        api_get(f"cru_guess{n}", address=ATTACKER)
    assert api_get(token, address=ATTACKER).status_code == 429
    age_attempts_past_the_cooloff()
    assert api_get(token, address=ATTACKER).status_code == 200


def test_wrong_tokens_do_not_lock_out_token_callers_elsewhere(token: str) -> None:
    # Failures without a username count against their address only, never against "no username".
    for n in range(LIMIT):
        api_get(f"cru_guess{n}", address=f"198.51.100.{n + 1}")
    assert api_get(token, address=OTHER).status_code == 200
    assert api_get(WRONG, address=OTHER).status_code == 401
