"""Every error under /api/ is JSON in the documented shape, 500 included; the schema takes a bearer token."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

import experiments.api.routes as routes
from crucible_ui.api import api
from experiments.api.bodies import MAX_JSON_BODY_BYTES
from experiments.api.tokens import api_token_create
from experiments.models import Experiment


@pytest.fixture
def creator(db: Any) -> User:
    user = User.objects.create_user("cara")
    user.user_permissions.set(Permission.objects.filter(codename__in=["add_experiment", "view_experiment"]))
    return user


@pytest.fixture
def token(creator: User) -> str:
    return api_token_create(user=creator, name="errors")[1]


@pytest.fixture
def client(token: str) -> Client:
    # raise_request_exception=False: a 500 must come back as the server's answer, as a client sees it.
    return Client(HTTP_AUTHORIZATION=f"Bearer {token}", raise_request_exception=False)


def assert_json_error(response: Any, status: int) -> str:
    """Check the documented error shape; return its detail."""
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"].split(";")[0] == "application/json"
    body = response.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str) and body["detail"]
    return str(body["detail"])


def test_an_unknown_api_path_is_a_json_404(client: Client) -> None:
    assert "/api/no-such-thing" in assert_json_error(client.get("/api/no-such-thing"), 404)


def test_a_method_an_endpoint_does_not_take_is_a_json_405_naming_the_allowed_ones(client: Client) -> None:
    response = client.delete("/api/experiments")
    detail = assert_json_error(response, 405)
    assert "GET" in response["Allow"] and "POST" in response["Allow"]
    assert "POST" in detail


def test_a_body_over_the_bound_is_a_json_413_and_creates_nothing(client: Client) -> None:
    body = b'{"name": "big", "recipe": "digits", "description": "' + b"x" * (10 << 20) + b'"}'
    detail = assert_json_error(client.post("/api/experiments", body, content_type="application/json"), 413)
    assert str(MAX_JSON_BODY_BYTES) in detail
    assert not Experiment.objects.exists()


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"]
)
def test_a_body_that_is_not_json_is_a_json_415_and_creates_nothing(client: Client, content_type: str) -> None:
    body = '{"name": "typed", "recipe": "digits"}'
    response = client.post("/api/experiments", body, content_type=content_type)
    assert "application/json" in assert_json_error(response, 415)
    assert not Experiment.objects.exists()


def test_a_json_body_with_a_charset_is_accepted(client: Client) -> None:
    body = '{"name": "typed", "recipe": "digits"}'
    response = client.post("/api/experiments", body, content_type="application/json; charset=utf-8")
    assert response.status_code == 201, response.content


def test_an_exception_in_an_api_operation_is_a_json_500_that_names_nothing_internal(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bug cannot be produced on purpose: this stands in for one inside an operation.
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(routes, "_filtered", broken)
    detail = assert_json_error(client.get("/api/experiments"), 500)
    assert "secret" not in detail


def test_an_exception_outside_the_operations_is_a_json_500_too(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(api, "get_openapi_schema", broken)
    detail = assert_json_error(client.get("/api/openapi.json"), 500)
    assert "secret" not in detail


def test_the_schema_and_the_docs_take_a_bearer_token(client: Client) -> None:
    schema = client.get("/api/openapi.json")
    assert schema.status_code == 200 and "/api/experiments" in schema.json()["paths"]
    assert client.get("/api/docs").status_code == 200


@pytest.mark.django_db
def test_a_wrong_token_on_the_schema_is_a_json_401() -> None:
    response = Client(HTTP_AUTHORIZATION="Bearer cru_wrong").get("/api/openapi.json")
    assert_json_error(response, 401)
    assert response["WWW-Authenticate"].startswith("Bearer")
