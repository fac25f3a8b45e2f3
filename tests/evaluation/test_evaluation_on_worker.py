"""Through a real Celery worker and Redis: train digits, evaluate it as a job of its own, decide on its numbers."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from control.models import Device
from control.policies.models import ActionRole, PolicyKind, TriggerEvent
from experiments.actors import Actor
from experiments.choices import State
from experiments.models import EvaluationStatus, Experiment, RunArtifact, RunEvaluation, TransitionLog
from experiments.services import experiment_create, experiment_transition
from tests.conftest import WorkerHandle, wait_for
from tests.policies.helpers import make_policy

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


def _state(experiment: Experiment) -> str:
    experiment.refresh_from_db()
    return str(experiment.state)


def test_a_trained_run_is_evaluated_on_a_leased_slot_and_auto_promote_decides_on_its_numbers(
    celery_worker: WorkerHandle, client: Client
) -> None:
    make_policy(
        "promote_on_held_out",
        PolicyKind.AUTO_PROMOTE,
        [
            {"kind": "metric", "metric": "eval/accuracy", "operator": ">", "threshold": 0.8},
            {"kind": "metric", "metric": "eval/ece", "operator": "<", "threshold": 0.3},
        ],
        [{"kind": "promote"}, {"kind": "hold", "role": ActionRole.FALLBACK}],
        scope_recipes=["digits"],
    )
    experiment = experiment_create(name="digits evaluated", recipe="digits", config={"epochs": 3})
    experiment_transition(experiment_id=experiment.pk, event="queue", actor=Actor.system("test"))

    wait_for(
        lambda: _state(experiment) in (State.PROMOTING, State.DEPLOYED), timeout=180, what="the promotion"
    )

    run = experiment.runs.get()
    evaluation = RunEvaluation.objects.get(run=run)
    assert evaluation.status == EvaluationStatus.SUCCEEDED
    assert evaluation.worker == celery_worker.hostname and evaluation.device.startswith("cpu")
    assert evaluation.metrics["accuracy"] > 0.8 and evaluation.checkpoint_sha256 == run.checkpoint_sha256
    # The experiment sat in evaluating from training's end until the job's result landed, and the
    # policy decided only then, on the job's numbers.
    log = {row.event: row for row in TransitionLog.objects.filter(experiment=experiment)}
    assert evaluation.started_at is not None and evaluation.finished_at is not None
    assert log["complete"].created_at <= evaluation.started_at
    assert log["promote"].created_at >= evaluation.finished_at
    assert log["promote"].actor == "policy:promote_on_held_out"
    trigger = TriggerEvent.objects.get(experiment=experiment)
    assert trigger.conditions_passed and trigger.created_at >= evaluation.finished_at
    values = [c["value"] for c in trigger.snapshot["conditions"]]
    assert values == [pytest.approx(evaluation.metrics["accuracy"]), pytest.approx(evaluation.metrics["ece"])]
    assert set(RunArtifact.objects.filter(run=run).values_list("name", flat=True)) == {
        "model.pt",
        "confusion_matrix.csv",
        "evaluation_report.json",
    }
    # The slot leased to the evaluation is free again.
    wait_for(
        lambda: not Device.objects.filter(leased_run__isnull=False).exists(), timeout=10, what="leases freed"
    )

    viewer = User.objects.create_user("viewer", password="pw-viewer-123")
    viewer.user_permissions.add(Permission.objects.get(codename="view_experiment"))
    client.force_login(viewer)
    page = client.get(experiment.get_absolute_url()).content.decode()
    assert 'data-metric="eval/accuracy"' in page and 'data-metric="eval/recall_class_9"' in page
    for stage in ("load_data", "train", "export", "evaluate"):
        assert f'data-stage="{stage}" data-done="true"' in page
    assert "confusion_matrix.csv" in page
