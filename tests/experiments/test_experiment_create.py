"""Creating experiments: the config is checked against the recipe's declared parameters."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from experiments.choices import State
from experiments.services import experiment_create


@pytest.mark.django_db
def test_defaults_are_filled_in_from_the_recipe() -> None:
    experiment = experiment_create(name="d", recipe="digits", config={"epochs": 4})
    assert experiment.state == State.PENDING
    assert experiment.config["epochs"] == 4
    assert experiment.config["batch_size"] == 64


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"epochs": "many"}, "epochs: must be an integer"),
        ({"epochs": 0}, "epochs: must be at least 1"),
        ({"lr": 5}, "lr: must be at most 1"),
        ({"lr": True}, "lr: must be a number"),
        ({"learning_rate": 0.1}, "learning_rate: unknown parameter"),
    ],
)
def test_bad_config_is_refused_with_a_message_per_key(config: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as exc:
        experiment_create(name="bad", recipe="digits", config=config)
    assert any(message in m for m in exc.value.message_dict["config"])


@pytest.mark.django_db
def test_unknown_recipe_is_refused_on_the_recipe_field() -> None:
    with pytest.raises(ValidationError) as exc:
        experiment_create(name="bad", recipe="alchemy")
    assert "unknown recipe" in exc.value.message_dict["recipe"][0]


@pytest.mark.django_db
def test_priority_out_of_range_is_refused() -> None:
    with pytest.raises(ValidationError) as exc:
        experiment_create(name="bad", recipe="digits", priority=11)
    assert "priority" in exc.value.message_dict
