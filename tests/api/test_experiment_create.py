"""POST /api/experiments: a valid body creates a pending experiment; bad input gets field paths."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from experiments.models import Experiment
from tests.api.conftest import ClientFor, post_json

URL = "/api/experiments"


def _errors(response: Any) -> dict[tuple[str | int, ...], str]:
    assert response.status_code == 422, response.content
    return {tuple(error["loc"]): error["msg"] for error in response.json()["detail"]}


def test_it_creates_a_pending_experiment_owned_by_the_caller(api: Client) -> None:
    body = {
        "name": "digits wide",
        "recipe": "digits",
        "config": {"epochs": 5, "lr": 0.01},
        "description": "wider hidden layers",
        "priority_class": "interactive",
        "priority": 8,
        "gpus": 1,
        "gpu_type": "H100",
        "memory_gb": 12.5,
        "max_attempts": 2,
        "timeout_seconds": 600,
        "tags": ["sweep", "wide"],
    }
    response = post_json(api, URL, body)
    assert response.status_code == 201, response.content
    data = response.json()
    experiment = Experiment.objects.get(pk=data["id"])
    assert (experiment.state, experiment.owner.username) == ("pending", "olga")
    assert experiment.config["epochs"] == 5 and experiment.config["batch_size"] == 64  # default filled in
    assert (experiment.priority_class, experiment.priority, experiment.gpus) == ("interactive", 8, 1)
    assert (experiment.gpu_type, experiment.memory_gb, experiment.tags) == ("H100", 12.5, ["sweep", "wide"])
    assert data["state"] == "pending" and data["config"] == experiment.config
    assert "queue" in data["available_events"] and data["transitions"] == []


def test_only_name_and_recipe_are_required(api: Client) -> None:
    response = post_json(api, URL, {"name": "minimal", "recipe": "charlm"})
    assert response.status_code == 201
    assert response.json()["priority_class"] == "batch"


def test_a_config_value_of_the_wrong_type_is_reported_at_its_path(api: Client) -> None:
    errors = _errors(post_json(api, URL, {"name": "x", "recipe": "digits", "config": {"epochs": "many"}}))
    assert errors == {("body", "config", "epochs"): "must be an integer"}


def test_an_unknown_config_key_is_reported_at_its_path(api: Client) -> None:
    errors = _errors(post_json(api, URL, {"name": "x", "recipe": "digits", "config": {"epoch": 3}}))
    assert "unknown parameter" in errors[("body", "config", "epoch")]
    assert "epochs" in errors[("body", "config", "epoch")]  # the message lists the known keys


def test_an_out_of_range_config_value_is_reported_at_its_path(api: Client) -> None:
    errors = _errors(post_json(api, URL, {"name": "x", "recipe": "digits", "config": {"lr": 5, "epochs": 0}}))
    assert errors == {
        ("body", "config", "lr"): "must be at most 1",
        ("body", "config", "epochs"): "must be at least 1",
    }


def test_an_unknown_recipe_is_reported_on_the_recipe_field(api: Client) -> None:
    errors = _errors(post_json(api, URL, {"name": "x", "recipe": "gpt5"}))
    assert "unknown recipe" in errors[("body", "recipe")]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("priority", "high", "valid integer"),
        ("priority", "5", "valid integer"),  # strict: a string is not a priority
        ("priority", 11, "less than or equal to 10"),
        ("gpus", True, "valid integer"),
        ("priority_class", "urgent", "realtime"),
        ("tags", "sweep", "valid list"),
        ("config", [1, 2], "valid dictionary"),
        ("name", "", "at least 1 character"),
        ("memory_gb", -1, "greater than or equal to 0"),
        ("colour", "blue", "Extra inputs are not permitted"),
    ],
)
def test_wrong_json_types_and_values_get_the_same_error_shape(
    api: Client, field: str, value: Any, message: str
) -> None:
    errors = _errors(post_json(api, URL, {"name": "x", "recipe": "digits", field: value}))
    assert message in errors[("body", field)]
    assert not Experiment.objects.exists()


def test_a_body_that_is_not_an_object_is_a_422_not_a_500(api: Client) -> None:
    errors = _errors(post_json(api, URL, ["name", "x"]))
    assert ("body",) in errors


@pytest.mark.parametrize("raw", [b"{not json", b'{"name": "x",', b"\xff\xfe"])
def test_malformed_json_is_a_400_json_answer(api: Client, raw: bytes) -> None:
    response = api.generic("POST", URL, raw, content_type="application/json")
    assert response.status_code == 400
    assert "parse" in response.json()["detail"]


def test_a_missing_body_names_the_required_fields(api: Client) -> None:
    errors = _errors(post_json(api, URL))
    assert errors == {("body",): "Field required"}


def test_a_person_without_the_add_permission_gets_403_and_nothing_is_created(
    viewer: User, client_for: ClientFor
) -> None:
    response = post_json(client_for(viewer), URL, {"name": "x", "recipe": "digits"})
    assert response.status_code == 403
    assert "experiments.add_experiment" in response.json()["detail"]  # what to ask for
    assert not Experiment.objects.exists()


def test_a_whole_number_is_a_valid_memory_size(api: Client) -> None:
    response = post_json(api, URL, {"name": "x", "recipe": "digits", "memory_gb": 8})
    assert response.status_code == 201
    assert response.json()["memory_gb"] == 8.0
