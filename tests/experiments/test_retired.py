"""The lifecycle says what serves: a replaced experiment is retired, a rollback reinstates it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User

from experiments.actors import Actor
from experiments.choices import State
from experiments.models import Experiment, ModelStage, ModelVersion, TransitionLog
from experiments.registry.services import registry_rollback
from tests.digits_models import SYSTEM, evaluating_digits_experiment, promote_to_production

pytestmark = pytest.mark.django_db


def _finished(name: str, folder: Path) -> Experiment:
    # The registry records a checkpoint by path and hash; nothing here loads it.
    checkpoint = folder / f"{name}.pt"
    checkpoint.write_bytes(name.encode() * 64)
    return evaluating_digits_experiment(name, checkpoint)


def _state(experiment: Experiment) -> str:
    return str(Experiment.objects.get(pk=experiment.pk).state)


def test_a_newer_version_retires_the_deployed_experiment_and_a_rollback_reinstates_it(
    tmp_path: Path, django_capture_on_commit_callbacks: Any
) -> None:
    first, second = _finished("first", tmp_path), _finished("second", tmp_path)
    with django_capture_on_commit_callbacks(execute=True):
        promote_to_production(first)
    with django_capture_on_commit_callbacks(execute=True):
        promote_to_production(second)

    assert (_state(first), _state(second)) == (State.RETIRED, State.DEPLOYED)
    assert Experiment.objects.filter(recipe="digits", state=State.DEPLOYED).count() == 1
    retire = TransitionLog.objects.get(experiment=first, event="retire")
    assert retire.actor == "system:registry" and "v2 replaced v1" in retire.reason
    assert ModelVersion.objects.get(experiment=first).stage == ModelStage.ARCHIVED

    person = User.objects.create_user("rita")
    person.user_permissions.set(
        Permission.objects.filter(codename__in=["view_experiment", "rollback_experiment"])
    )
    with django_capture_on_commit_callbacks(execute=True):
        restored = registry_rollback(model_name="digits", actor=Actor.for_user(person), reason="bad answers")

    assert restored.experiment_id == first.pk and restored.stage == ModelStage.PRODUCTION
    assert (_state(first), _state(second)) == (State.DEPLOYED, State.ROLLED_BACK)
    reinstate = TransitionLog.objects.get(experiment=first, event="reinstate")
    assert reinstate.actor == "system:registry" and "user:rita" in reinstate.reason
    assert Experiment.objects.filter(recipe="digits", state=State.DEPLOYED).count() == 1


def test_rolling_the_newer_experiment_back_reinstates_the_one_it_replaced(
    tmp_path: Path, django_capture_on_commit_callbacks: Any
) -> None:
    from experiments.services import experiment_transition

    first, second = _finished("first", tmp_path), _finished("second", tmp_path)
    with django_capture_on_commit_callbacks(execute=True):
        promote_to_production(first)
        promote_to_production(second)
    assert _state(first) == State.RETIRED
    with django_capture_on_commit_callbacks(execute=True):
        experiment_transition(experiment_id=second.pk, event="rollback", actor=SYSTEM)

    assert (_state(first), _state(second)) == (State.DEPLOYED, State.ROLLED_BACK)
    assert (
        ModelVersion.objects.get(model_name="digits", stage=ModelStage.PRODUCTION).experiment_id == first.pk
    )


def test_retire_and_reinstate_are_not_a_persons_buttons() -> None:
    from experiments.views import PERSON_EVENTS

    assert not {"retire", "reinstate", "withdraw"} & PERSON_EVENTS
