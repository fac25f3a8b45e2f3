"""Evaluation jobs on the held-out set, and a queued canary judged again when its turn comes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from control.canary.models import CanaryRollout, RolloutStatus
from control.canary.rollouts import canary_sweep
from control.policies.authoring import policy_create
from control.policies.models import ActionRole
from control.policies.tasks import evaluate_version_task
from experiments.actors import Actor
from experiments.choices import State
from experiments.models import (
    Experiment,
    ModelStage,
    ModelVersion,
    TransitionLog,
    VersionEvaluation,
    VersionEvaluationStatus,
)
from experiments.registry.services import model_version_register
from experiments.services import experiment_transition
from tests.digits_models import canary_policy_create
from tests.registry.conftest import MakeExperiment

pytestmark = pytest.mark.django_db
ALICE = Actor.system("alice")


def test_the_evaluation_job_stores_held_out_metrics_on_the_version_and_the_registry_shows_them(
    make_experiment: MakeExperiment,
    digits_checkpoint: tuple[Path, dict[str, float]],
    viewer: User,
) -> None:
    version = model_version_register(experiment_id=make_experiment("evaluated").pk)

    assert evaluate_version_task.apply(args=[version.pk]).get() == VersionEvaluationStatus.SUCCEEDED

    evaluation = VersionEvaluation.objects.get(version=version)
    # The checkpoint was trained on the default split, whose validation half is the held-out
    # set: the job's numbers must be the ones the training loop measured there.
    trained = digits_checkpoint[1]
    assert evaluation.metrics["accuracy"] == pytest.approx(trained["accuracy"], abs=1e-6)
    assert evaluation.metrics["val_loss"] == pytest.approx(trained["val_loss"], rel=1e-4)
    assert "seed 0" in evaluation.eval_set and evaluation.note == ""
    # A second job finds the stored result.
    evaluate_version_task.apply(args=[version.pk])
    assert VersionEvaluation.objects.filter(version=version).count() == 1

    client = Client()
    client.force_login(viewer)
    page = client.get("/registry/").content.decode()
    assert evaluation.eval_set in page
    assert f"accuracy {evaluation.metrics['accuracy']:.4f}" in page


def test_a_checkpoint_that_no_longer_matches_its_hash_records_a_failed_evaluation(
    make_experiment: MakeExperiment, tmp_path: Path, viewer: User
) -> None:
    version = model_version_register(experiment_id=make_experiment("tampered").pk)
    ModelVersion.objects.filter(pk=version.pk).update(checkpoint_sha256="0" * 64)

    assert evaluate_version_task.apply(args=[version.pk]).get() == VersionEvaluationStatus.FAILED

    evaluation = VersionEvaluation.objects.get(version=version)
    assert "sha256" in evaluation.error and evaluation.metrics == {}
    client = Client()
    client.force_login(viewer)
    assert "evaluation failed" in client.get("/registry/").content.decode()


def test_a_queued_canary_that_lost_to_the_new_production_is_dropped_not_deployed(
    make_experiment: MakeExperiment,
    weak_digits_checkpoint: tuple[Path, dict[str, float]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    canary_policy_create(("c10", 10, 60), ("full", 100, 0))
    policy_create(
        name="auto_promote",
        kind="auto_promote",
        conditions=[{"kind": "regression", "metric": "val_loss", "threshold": 0.05}],
        actions=[{"kind": "promote"}, {"kind": "hold", "role": ActionRole.FALLBACK}],
    )
    good = make_experiment("good")
    weak = make_experiment("weak", checkpoint=weak_digits_checkpoint[0])
    # Promoted while nothing was in production: the first canary runs, the second waits its turn.
    with django_capture_on_commit_callbacks(execute=True):
        experiment_transition(experiment_id=good.pk, event="promote", actor=ALICE)
        experiment_transition(experiment_id=weak.pk, event="promote", actor=ALICE)
    waiting = CanaryRollout.objects.get(experiment=weak)
    assert waiting.status == RolloutStatus.QUEUED

    with django_capture_on_commit_callbacks(execute=True):
        experiment_transition(experiment_id=good.pk, event="deploy", actor=ALICE)
    with django_capture_on_commit_callbacks(execute=True):
        canary_sweep()

    waiting.refresh_from_db()
    champion = ModelVersion.objects.get(model_name="digits", stage=ModelStage.PRODUCTION)
    assert champion.experiment_id == good.pk
    assert waiting.status == RolloutStatus.CANCELLED and waiting.baseline_id is None
    assert waiting.outcome.startswith("dropped, not deployed: lost to production")
    assert ModelVersion.objects.get(pk=waiting.candidate_id).stage == ModelStage.ARCHIVED
    assert Experiment.objects.get(pk=weak.pk).state == State.COMPLETED
    withdraw = TransitionLog.objects.get(experiment=weak, event="withdraw")
    assert withdraw.actor == "policy:auto_promote"
    assert f"v{champion.version}" in withdraw.reason and "val_loss" in withdraw.reason
