"""The model registry: numbering, promotion, rollback, and the experiment lifecycle driving it."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from experiments.actors import Actor
from experiments.choices import State
from experiments.models import Experiment, ModelStage, ModelVersion, TransitionLog
from experiments.registry.services import (
    RegistryError,
    model_rollback,
    model_version_promote,
    model_version_register,
)
from experiments.services import experiment_create, experiment_transition
from tests.registry.conftest import MakeExperiment

ALICE = Actor.system("alice")


def predict_version(client: Client, model: str = "digits") -> int:
    """Return the version number that answers one predict request."""
    response = client.post(
        f"/serve/{model}/predict", {"features": [0.0] * 64}, content_type="application/json"
    )
    assert response.status_code == 200, response.content
    version: int = response.json()["version"]
    return version


@pytest.mark.django_db
def test_versions_are_numbered_from_one_per_model_and_registering_twice_returns_the_same(
    make_experiment: MakeExperiment,
) -> None:
    first = model_version_register(experiment_id=make_experiment("a").pk)
    second = model_version_register(experiment_id=make_experiment("b").pk)
    other = model_version_register(experiment_id=make_experiment("c").pk, model_name="digits-small")
    again = model_version_register(experiment_id=first.experiment_id)  # type: ignore[arg-type]

    assert (first.version, second.version, other.version) == (1, 2, 1)
    assert again.pk == first.pk
    assert first.model_name == "digits" and first.stage == ModelStage.NONE
    assert first.checkpoint_sha256 == first.run.checkpoint_sha256  # type: ignore[union-attr]
    assert first.metrics["accuracy"] > 0.5


@pytest.mark.django_db
def test_registering_an_experiment_without_a_checkpointed_run_is_refused_clearly() -> None:
    experiment = experiment_create(name="untrained", recipe="digits")
    with pytest.raises(RegistryError, match="no succeeded run with a checkpoint"):
        model_version_register(experiment_id=experiment.pk)
    assert not ModelVersion.objects.exists()


@pytest.mark.django_db
def test_promoting_archives_the_previous_production_and_records_it_as_parent(
    make_experiment: MakeExperiment,
) -> None:
    v1 = model_version_register(experiment_id=make_experiment("a").pk)
    v2 = model_version_register(experiment_id=make_experiment("b").pk)
    model_version_promote(version_id=v1.pk, actor=ALICE)
    model_version_promote(version_id=v2.pk, actor=ALICE)

    v1.refresh_from_db()
    v2.refresh_from_db()
    assert v1.stage == ModelStage.ARCHIVED
    assert v2.stage == ModelStage.PRODUCTION
    assert v2.parent_id == v1.pk
    assert v2.promoted_by == "system:alice" and v2.promoted_at is not None


@pytest.mark.django_db
def test_rollback_restores_the_previous_production_version_for_serving(
    make_experiment: MakeExperiment, token_client: Client
) -> None:
    v1 = model_version_register(experiment_id=make_experiment("a").pk)
    v2 = model_version_register(experiment_id=make_experiment("b").pk)
    model_version_promote(version_id=v1.pk, actor=ALICE)
    model_version_promote(version_id=v2.pk, actor=ALICE)
    assert predict_version(token_client) == 2

    restored = model_rollback(model_name="digits", actor=ALICE)

    assert restored.pk == v1.pk
    assert predict_version(token_client) == 1
    v2.refresh_from_db()
    assert v2.stage == ModelStage.ARCHIVED


@pytest.mark.django_db
def test_rollback_without_an_earlier_production_version_is_refused(make_experiment: MakeExperiment) -> None:
    v1 = model_version_register(experiment_id=make_experiment().pk)
    with pytest.raises(RegistryError, match="no production version"):
        model_rollback(model_name="digits", actor=ALICE)
    model_version_promote(version_id=v1.pk, actor=ALICE)
    with pytest.raises(RegistryError, match="nothing to restore"):
        model_rollback(model_name="digits", actor=ALICE)


def _promote_and_deploy(experiment: Experiment) -> None:
    for event in ("promote", "deploy"):
        experiment_transition(experiment_id=experiment.pk, event=event, actor=ALICE)


@pytest.mark.django_db
def test_promote_and_deploy_of_an_experiment_put_its_version_in_production(
    make_experiment: MakeExperiment, django_capture_on_commit_callbacks: Any
) -> None:
    experiment = make_experiment()
    with django_capture_on_commit_callbacks(execute=True):
        experiment_transition(experiment_id=experiment.pk, event="promote", actor=ALICE)
    version = ModelVersion.objects.get(experiment=experiment)
    assert version.stage == ModelStage.CANARY

    with django_capture_on_commit_callbacks(execute=True):
        experiment_transition(experiment_id=experiment.pk, event="deploy", actor=ALICE)
    version.refresh_from_db()
    assert (version.version, version.stage) == (1, ModelStage.PRODUCTION)


@pytest.mark.django_db
def test_rolling_back_a_deployed_experiment_restores_the_version_it_replaced(
    make_experiment: MakeExperiment, django_capture_on_commit_callbacks: Any
) -> None:
    old, new = make_experiment("old"), make_experiment("new")
    with django_capture_on_commit_callbacks(execute=True):
        _promote_and_deploy(old)
    with django_capture_on_commit_callbacks(execute=True):
        _promote_and_deploy(new)
    assert ModelVersion.objects.get(stage=ModelStage.PRODUCTION).experiment_id == new.pk

    with django_capture_on_commit_callbacks(execute=True):
        experiment_transition(experiment_id=new.pk, event="rollback", actor=ALICE)

    assert ModelVersion.objects.get(stage=ModelStage.PRODUCTION).experiment_id == old.pk
    assert ModelVersion.objects.get(experiment=new).stage == ModelStage.ARCHIVED


@pytest.mark.django_db
def test_registry_page_lists_versions_and_its_rollback_button_restores_and_audits(
    make_experiment: MakeExperiment, operator: Any, django_capture_on_commit_callbacks: Any
) -> None:
    old, new = make_experiment("old"), make_experiment("new")
    with django_capture_on_commit_callbacks(execute=True):
        _promote_and_deploy(old)
        _promote_and_deploy(new)
    client = Client()
    client.force_login(operator)

    page = client.get("/registry/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-dialog-open="confirm-rollback-digits"' in html
    assert ModelVersion.objects.get(experiment=new).checkpoint_sha256[:12] in html
    assert 'href="/registry/"' in html  # the nav link

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/registry/digits/rollback", {"reason": "bad canary"})
    assert response.status_code == 302
    assert ModelVersion.objects.get(stage=ModelStage.PRODUCTION).experiment_id == old.pk
    new.refresh_from_db()
    assert new.state == State.ROLLED_BACK
    log = TransitionLog.objects.filter(experiment=new, event="rollback").get()
    assert (log.actor, log.reason) == ("user:olga", "bad canary")


@pytest.mark.django_db
def test_registry_rollback_needs_the_rollback_permission(
    make_experiment: MakeExperiment, viewer: Any
) -> None:
    v1 = model_version_register(experiment_id=make_experiment("a").pk)
    v2 = model_version_register(experiment_id=make_experiment("b").pk)
    model_version_promote(version_id=v1.pk, actor=ALICE)
    model_version_promote(version_id=v2.pk, actor=ALICE)
    client = Client()
    client.force_login(viewer)

    assert "confirm-rollback-digits" not in client.get("/registry/").content.decode()
    assert client.post("/registry/digits/rollback").status_code == 403
    assert ModelVersion.objects.get(stage=ModelStage.PRODUCTION).pk == v2.pk
