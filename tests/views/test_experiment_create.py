"""The create form: a valid config makes a pending experiment; bad input is shown by its field."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from experiments.models import Experiment


def _form(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "digits try",
        "description": "a first try",
        "recipe": "digits",
        "config": json.dumps({"epochs": 5, "lr": 0.01}),
        "priority_class": "interactive",
        "priority": 7,
        "gpus": 0,
        "gpu_type": "",
        "memory_gb": 0,
        "max_attempts": 2,
        "timeout_seconds": 600,
        "tags": "baseline, sweep-1, baseline",
    }
    data.update(overrides)
    return data


def _field_errors(html: str, field: str) -> list[str]:
    block = re.search(rf'<ul class="errorlist field-errors" id="errors-{field}"[^>]*>(.*?)</ul>', html, re.S)
    return re.findall(r"<li>(.*?)</li>", block.group(1)) if block else []


def test_form_explains_the_recipe_parameters_and_prefills_their_defaults(researcher_client: Client) -> None:
    html = researcher_client.get(reverse("experiments:create")).content.decode()
    # Each recipe's parameter table: name, type, default, range, help.
    assert 'data-recipe="digits"' in html and 'data-recipe="charlm"' in html
    assert "<code>epochs</code>" in html and "Passes over the training split." in html
    assert "1 … 500" in html
    # The config textarea starts with the digits defaults.
    assert "&quot;epochs&quot;: 30" in html
    assert 'id="recipe-defaults"' in html


def test_valid_form_creates_a_pending_experiment_owned_by_the_person(
    researcher_client: Client, researcher: User
) -> None:
    response = researcher_client.post(reverse("experiments:create"), _form())
    experiment = Experiment.objects.get()
    assert response.status_code == 302
    assert response["Location"] == experiment.get_absolute_url()
    assert experiment.state == "pending"
    assert experiment.owner == researcher
    assert experiment.config["epochs"] == 5 and experiment.config["lr"] == 0.01
    assert experiment.config["batch_size"] == 64  # left out: its default
    assert experiment.priority_class == "interactive" and experiment.priority == 7
    assert experiment.tags == ["baseline", "sweep-1"]
    page = researcher_client.get(response["Location"]).content.decode()
    assert "Press Start to queue it" in page


def test_empty_config_takes_every_default(researcher_client: Client) -> None:
    researcher_client.post(reverse("experiments:create"), _form(config=""))
    assert Experiment.objects.get().config["epochs"] == 30


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"epochs": 5, "optimizer": "sgd"}, "optimizer: unknown parameter"),
        ({"epochs": "many"}, "epochs: must be an integer"),
        ({"epochs": 100000}, "epochs: must be at most 500"),
        ({"lr": -1}, "lr: must be at least"),
    ],
)
def test_bad_config_is_shown_next_to_the_config_field_and_nothing_is_saved(
    researcher_client: Client, config: dict[str, Any], expected: str
) -> None:
    response = researcher_client.post(reverse("experiments:create"), _form(config=json.dumps(config)))
    assert response.status_code == 400
    errors = _field_errors(response.content.decode(), "config")
    assert any(e.startswith(expected) for e in errors), errors
    assert not Experiment.objects.exists()
    # What the person typed is kept, so they can fix it.
    assert "digits try" in response.content.decode()


def test_several_config_errors_are_all_listed(researcher_client: Client) -> None:
    response = researcher_client.post(
        reverse("experiments:create"), _form(config=json.dumps({"epochs": 0, "batch_size": "x", "nope": 1}))
    )
    errors = _field_errors(response.content.decode(), "config")
    assert len(errors) == 3


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("{epochs: 5", "Not valid JSON"), ("[1, 2]", "Must be a JSON object")],
)
def test_config_that_is_not_a_json_object_is_refused(
    researcher_client: Client, raw: str, expected: str
) -> None:
    response = researcher_client.post(reverse("experiments:create"), _form(config=raw))
    assert response.status_code == 400
    assert any(expected in e for e in _field_errors(response.content.decode(), "config"))
    assert not Experiment.objects.exists()


def test_out_of_range_resources_and_unknown_recipe_are_refused_by_field(researcher_client: Client) -> None:
    response = researcher_client.post(
        reverse("experiments:create"), _form(recipe="nope", priority=11, gpus=-1, name="")
    )
    html = response.content.decode()
    assert response.status_code == 400
    assert _field_errors(html, "recipe")
    assert _field_errors(html, "priority")
    assert _field_errors(html, "gpus")
    assert _field_errors(html, "name")
    assert not Experiment.objects.exists()


def test_person_without_add_permission_may_not_create(client: Client, viewer: User) -> None:
    client.force_login(viewer)
    assert client.get(reverse("experiments:create")).status_code == 403
    assert client.post(reverse("experiments:create"), _form()).status_code == 403
    assert not Experiment.objects.exists()
