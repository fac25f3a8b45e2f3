"""The evaluation job without a worker: what it stores, a failure held for review, the gate's wait and reuse."""

from __future__ import annotations

from pathlib import Path

import pytest

from control.policies.engine import engine_on_complete
from control.policies.models import ActionRole, PolicyKind, TriggerEvent
from experiments.choices import State
from experiments.models import (
    EvaluationStatus,
    Experiment,
    MetricPoint,
    ModelVersion,
    RunArtifact,
    RunEvaluation,
    RunStage,
    TransitionLog,
    VersionEvaluationStatus,
)
from experiments.registry.evaluation import model_version_evaluate
from experiments.registry.services import model_version_register
from experiments.runs.evaluation import run_evaluation_execute, run_evaluation_request
from tests.digits_models import evaluating_digits_experiment, train_digits
from tests.policies.helpers import make_policy

pytestmark = pytest.mark.django_db

Trained = tuple[Path, dict[str, float]]


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A real digits model (4 epochs)."""
    return train_digits(tmp_path_factory.mktemp("digits-eval-job"), epochs=4)


def _evaluating(name: str, trained: Trained) -> Experiment:
    checkpoint, metrics = trained
    return evaluating_digits_experiment(name, checkpoint, metrics=metrics)


def test_the_job_stores_the_declared_metrics_as_eval_points_its_stage_and_the_evaluators_artifacts(
    trained: Trained,
) -> None:
    experiment = _evaluating("evaluated", trained)
    run = experiment.runs.get()
    evaluation = run_evaluation_request(run_id=run.pk)
    assert evaluation is not None and evaluation.status == EvaluationStatus.QUEUED

    assert run_evaluation_execute(evaluation_id=evaluation.pk, worker="w1") == EvaluationStatus.SUCCEEDED

    evaluation.refresh_from_db()
    expected = {
        "accuracy",
        "macro_f1",
        "auc_ovr",
        "ece",
        "val_loss",
        *(f"recall_class_{c}" for c in range(10)),
    }
    assert expected <= set(evaluation.metrics)
    assert 0.8 < evaluation.metrics["accuracy"] <= 1.0 and 0.0 <= evaluation.metrics["ece"] < 0.5
    assert evaluation.eval_set.startswith("digits validation split")
    points = dict(MetricPoint.objects.filter(run=run, name__startswith="eval/").values_list("name", "value"))
    assert points["eval/accuracy"] == pytest.approx(evaluation.metrics["accuracy"])
    assert RunStage.objects.filter(run=run, name="evaluate").exists()
    artifacts = set(RunArtifact.objects.filter(run=run).values_list("name", flat=True))
    assert artifacts == {"confusion_matrix.csv", "evaluation_report.json"}
    # A second delivery of the same job does nothing.
    assert run_evaluation_execute(evaluation_id=evaluation.pk, worker="w1") == "skipped"


def test_a_failed_evaluation_holds_the_experiment_for_review_with_the_reason(trained: Trained) -> None:
    experiment = _evaluating("broken checkpoint", trained)
    run = experiment.runs.get()
    evaluation = run_evaluation_request(run_id=run.pk)
    assert evaluation is not None
    # The file on disk is not the one the run recorded.
    RunEvaluation.objects.filter(pk=evaluation.pk).update(checkpoint_sha256="f" * 64)

    assert run_evaluation_execute(evaluation_id=evaluation.pk, worker="w1") == EvaluationStatus.FAILED

    evaluation.refresh_from_db()
    experiment.refresh_from_db()
    assert "does not match its recorded sha256" in evaluation.error
    assert experiment.state == State.COMPLETED
    hold = TransitionLog.objects.get(experiment=experiment, event="hold")
    assert hold.actor == "system:evaluation"
    assert "evaluation of attempt 1 failed" in hold.reason and "sha256" in hold.reason


def test_a_recipe_without_an_evaluator_gets_no_job(trained: Trained) -> None:
    experiment = _evaluating("no evaluator", trained)
    Experiment.objects.filter(pk=experiment.pk).update(recipe="script")
    assert run_evaluation_request(run_id=experiment.runs.get().pk) is None


def test_auto_promote_waits_for_the_evaluation_and_decides_on_its_numbers(trained: Trained) -> None:
    make_policy(
        "promote_on_held_out",
        PolicyKind.AUTO_PROMOTE,
        [{"kind": "metric", "metric": "eval/accuracy", "operator": ">", "threshold": 0.8}],
        [{"kind": "promote"}, {"kind": "hold", "role": ActionRole.FALLBACK}],
        scope_recipes=["digits"],
    )
    experiment = _evaluating("waits", trained)
    evaluation = run_evaluation_request(run_id=experiment.runs.get().pk)
    assert evaluation is not None

    assert engine_on_complete(experiment_id=experiment.pk) == []  # the job has not run yet
    assert not TriggerEvent.objects.filter(experiment=experiment).exists()

    run_evaluation_execute(evaluation_id=evaluation.pk, worker="w1")
    [trigger] = engine_on_complete(experiment_id=experiment.pk)

    assert trigger.conditions_passed is True
    [condition] = trigger.snapshot["conditions"]
    assert "eval/accuracy" in condition["condition"] and condition["value"] > 0.8
    # Asked again (the completion's own message arriving late), it does not decide twice.
    assert engine_on_complete(experiment_id=experiment.pk) == []


def test_the_registry_takes_the_jobs_numbers_instead_of_evaluating_again(trained: Trained) -> None:
    experiment = _evaluating("reused", trained)
    run = experiment.runs.get()
    evaluation = run_evaluation_request(run_id=run.pk)
    assert evaluation is not None
    run_evaluation_execute(evaluation_id=evaluation.pk, worker="w1")
    RunEvaluation.objects.filter(pk=evaluation.pk).update(metrics={"accuracy": 0.5, "ece": None})
    version = model_version_register(experiment_id=experiment.pk)
    ModelVersion.objects.filter(pk=version.pk).update(checkpoint_path="/nonexistent/step.pt")

    stored = model_version_evaluate(version_id=version.pk)

    # Evaluating again would have failed on the missing file; the job's numbers were taken.
    assert stored is not None and stored.status == VersionEvaluationStatus.SUCCEEDED
    assert stored.metrics == {"accuracy": 0.5}


def test_a_job_whose_worker_went_offline_is_failed_its_slot_freed_and_its_experiment_held(
    trained: Trained,
) -> None:
    from control.models import Device, Worker
    from control.scheduling.evaluations import evaluations_sweep

    experiment = _evaluating("lost worker", trained)
    run = experiment.runs.get()
    evaluation = run_evaluation_request(run_id=run.pk)
    assert evaluation is not None
    worker = Worker.objects.create(hostname="gone@host", queue="gone@host.dq2", online=False)
    slot = Device.objects.create(worker=worker, kind="cpu", index=0, name="CPU slot", leased_run=run)
    RunEvaluation.objects.filter(pk=evaluation.pk).update(
        status=EvaluationStatus.RUNNING, worker=worker.hostname
    )

    assert evaluations_sweep() == 1

    evaluation.refresh_from_db()
    slot.refresh_from_db()
    experiment.refresh_from_db()
    assert evaluation.status == EvaluationStatus.FAILED and "gone@host went offline" in evaluation.error
    assert slot.leased_run is None
    assert experiment.state == State.COMPLETED
    assert "went offline" in TransitionLog.objects.get(experiment=experiment, event="hold").reason


def test_dispatch_leases_a_cpu_slot_of_the_training_worker_first_and_a_gpu_where_none_has_one(
    trained: Trained,
) -> None:
    from control.models import Device, Worker
    from control.scheduling.evaluations import evaluation_dispatch

    def job(name: str, worker: str) -> RunEvaluation:
        experiment = _evaluating(name, trained)
        run = experiment.runs.get()
        run.worker = worker
        run.save(update_fields=["worker"])
        evaluation = run_evaluation_request(run_id=run.pk)
        assert evaluation is not None
        return evaluation

    other = Worker.objects.create(hostname="other@host", queue="other.dq2")
    own = Worker.objects.create(hostname="own@host", queue="own.dq2")
    other_cpu = Device.objects.create(worker=other, kind="cpu", index=0, name="CPU slot")
    own_gpu = Device.objects.create(worker=own, kind="gpu", index=0, name="H100")
    own_cpu = Device.objects.create(worker=own, kind="cpu", index=0, name="CPU slot")

    first = job("first", "own@host")
    assert evaluation_dispatch(evaluation_id=first.pk)
    own_cpu.refresh_from_db()
    assert own_cpu.leased_run_id == first.run_id  # its own worker's CPU slot, not the GPU

    second = job("second", "own@host")
    assert evaluation_dispatch(evaluation_id=second.pk)
    other_cpu.refresh_from_db()
    assert other_cpu.leased_run_id == second.run_id  # any CPU slot before a GPU

    third = job("third", "own@host")
    assert evaluation_dispatch(evaluation_id=third.pk)
    own_gpu.refresh_from_db()
    assert own_gpu.leased_run_id == third.run_id  # no CPU slot left: a free GPU

    fourth = job("fourth", "own@host")
    assert not evaluation_dispatch(evaluation_id=fourth.pk)  # waits for the next tick
    fourth.refresh_from_db()
    assert fourth.status == EvaluationStatus.QUEUED
