"""The New experiment page offers the dpo and grpo recipes and validates their parameters by name."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from experiments.models import Experiment
from tests.views.test_experiment_create import _field_errors, _form


def test_the_page_lists_every_builtin_recipe_with_its_parameters(researcher_client: Client) -> None:
    html = researcher_client.get(reverse("experiments:create")).content.decode()
    for recipe in ("digits", "charlm", "distill", "dpo", "grpo", "script"):
        assert f'data-recipe="{recipe}"' in html
    assert "<code>beta</code>" in html and "DPO temperature" in html
    assert "<code>group_size</code>" in html and "normalised within it" in html


@pytest.mark.parametrize(
    ("recipe", "config", "expected"),
    [
        ("dpo", {"beta": 0.2, "steps": 20}, {"beta": 0.2, "steps": 20, "pretrain_steps": 300}),
        ("grpo", {"length": 4}, {"length": 4, "group_size": 8, "steps": 200}),
    ],
)
def test_a_valid_config_creates_a_pending_experiment_with_the_defaults_filled_in(
    researcher_client: Client, recipe: str, config: dict[str, Any], expected: dict[str, Any]
) -> None:
    response = researcher_client.post(
        reverse("experiments:create"), _form(name=f"{recipe} try", recipe=recipe, config=json.dumps(config))
    )
    assert response.status_code == 302
    experiment = Experiment.objects.get()
    assert experiment.recipe == recipe and experiment.state == "pending"
    assert expected.items() <= experiment.config.items()


@pytest.mark.parametrize(
    ("recipe", "config", "expected"),
    [
        ("dpo", {"context": 32, "completion": 20}, "completion: must be at most half the context (16)"),
        ("dpo", {"beta": 0}, "beta: must be at least"),
        ("grpo", {"group_size": 1}, "group_size: must be at least 2"),
        ("grpo", {"d_model": 64, "n_heads": 5}, "n_heads: must divide d_model (64)"),
    ],
)
def test_bad_params_are_shown_by_name_and_nothing_is_saved(
    researcher_client: Client, recipe: str, config: dict[str, Any], expected: str
) -> None:
    response = researcher_client.post(
        reverse("experiments:create"), _form(recipe=recipe, config=json.dumps(config))
    )
    assert response.status_code == 400
    errors = _field_errors(response.content.decode(), "config")
    assert any(e.startswith(expected) for e in errors), errors
    assert not Experiment.objects.exists()
