"""Through a real Celery worker and Redis: start, train digits, metrics, cancel, failure.

A killed or stopped worker (resume from the checkpoint) is in tests/faults/.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from control.models import Device
from experiments.actors import Actor
from experiments.choices import RunStatus, State
from experiments.models import EvaluationStatus, Experiment, MetricPoint, Run, RunEvaluation, TransitionLog
from experiments.services import experiment_create, experiment_transition
from tests.conftest import WorkerHandle, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


def _digits(name: str, **config: Any) -> Experiment:
    return experiment_create(
        name=name, recipe="digits", config={"epochs": 2, "batch_size": 64, **config}, max_attempts=3
    )


def _state(experiment: Experiment) -> str:
    experiment.refresh_from_db()
    return str(experiment.state)


def test_start_trains_digits_on_the_worker_and_lands_in_evaluating(celery_worker: WorkerHandle) -> None:
    experiment = _digits("digits e2e")
    experiment_transition(experiment_id=experiment.pk, event="queue", actor=Actor.system("test"))

    wait_for(lambda: _state(experiment) == State.EVALUATING, timeout=60, what="evaluating")

    run = Run.objects.get(experiment=experiment)
    assert run.status == RunStatus.SUCCEEDED
    assert run.worker == celery_worker.hostname
    assert run.final_metrics["accuracy"] > 0.5
    assert set(run.final_metrics) >= {"loss", "val_loss", "accuracy", "f1"}
    assert run.checkpoint_sha256 and len(run.checkpoint_sha256) == 64
    assert run.checkpoint_size and run.checkpoint_size > 0
    assert run.progress == pytest.approx(1.0) and run.eta_seconds is None
    assert run.last_step == run.checkpoint_step == 2 * 23
    steps = MetricPoint.objects.filter(run=run, name="loss").count()
    assert steps == run.checkpoint_step
    assert MetricPoint.objects.filter(run=run, name="accuracy").count() == 2
    events = list(TransitionLog.objects.filter(experiment=experiment).values_list("event", "actor"))
    assert events == [("queue", "system:test"), ("start", "system:scheduler"), ("complete", "system:worker")]
    # Training's slot went to the run's evaluation job; it is free once the job has ended.
    wait_for(
        lambda: RunEvaluation.objects.filter(run=run, status=EvaluationStatus.SUCCEEDED).exists(),
        timeout=60,
        what="the evaluation job",
    )
    wait_for(
        lambda: not Device.objects.filter(leased_run__isnull=False).exists(), timeout=10, what="no lease"
    )
    assert _state(experiment) == State.EVALUATING  # no policy decides: it waits for a person


def _live_run(experiment: Experiment, *, min_step: int = 1, attempt: int = 1) -> Run | None:
    run = Run.objects.filter(experiment=experiment, attempt=attempt).first()
    if run is None or run.status != RunStatus.RUNNING:
        return None
    return run if MetricPoint.objects.filter(run=run, name="loss", step__gte=min_step).exists() else None


def test_cancel_mid_run_stops_within_two_seconds_with_a_checkpoint(celery_worker: WorkerHandle) -> None:
    experiment = _digits("digits cancel", epochs=20, step_delay_ms=40)
    experiment_transition(experiment_id=experiment.pk, event="queue", actor=Actor.system("test"))
    wait_for(lambda: _live_run(experiment, min_step=5), timeout=60, what="training to start")

    experiment_transition(experiment_id=experiment.pk, event="cancel", actor=Actor.system("test"))
    asked = time.monotonic()
    run = wait_for(
        lambda: Run.objects.filter(experiment=experiment, status=RunStatus.CANCELLED).first(),
        timeout=10,
        interval=0.02,
        what="the run to stop",
    )
    stopped_in = time.monotonic() - asked

    assert stopped_in < 2.0
    assert run.finished_at is not None
    assert run.checkpoint_step and run.checkpoint_step >= 5
    assert run.checkpoint_sha256 and run.checkpoint_size
    assert _state(experiment) == State.CANCELLED
    assert not Device.objects.filter(leased_run__isnull=False).exists()
    # It stopped early: far fewer steps than 20 epochs.
    assert run.last_step < 20 * 23 or run.checkpoint_step < 20 * 23


def test_an_exception_fails_the_run_with_its_traceback_and_retries_up_to_max_attempts(
    celery_worker: WorkerHandle,
) -> None:
    experiment = experiment_create(
        name="digits broken", recipe="digits", config={"epochs": 1}, max_attempts=2
    )
    # A config no form would accept makes the recipe raise inside the worker.
    Experiment.objects.filter(pk=experiment.pk).update(config={"epochs": 0})
    experiment_transition(experiment_id=experiment.pk, event="queue", actor=Actor.system("test"))

    def two_failures() -> bool:
        return Run.objects.filter(experiment=experiment, status=RunStatus.FAILED).count() == 2

    wait_for(two_failures, timeout=60, what="two failed attempts")
    time.sleep(1.0)  # no third attempt follows

    first, second = Run.objects.filter(experiment=experiment).order_by("attempt")
    assert "ConfigError" in first.error
    assert "Traceback (most recent call last)" in first.traceback
    assert "epochs" in first.traceback
    assert first.finished_at is not None and second.created_at >= first.finished_at
    assert (second.created_at - first.finished_at).total_seconds() >= 0.4  # backoff (0.5 s)
    assert _state(experiment) == State.FAILED
    events = [e for (e,) in TransitionLog.objects.filter(experiment=experiment).values_list("event")]
    assert events == ["queue", "start", "fail", "retry", "start", "fail"]
    assert not Device.objects.filter(leased_run__isnull=False).exists()
