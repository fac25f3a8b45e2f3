"""Through a real Celery worker and Redis: start, train digits, metrics, cancel, crash and resume, failure."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
from django.test import override_settings

from control.models import Device
from control.services import watchdog_sweep
from experiments.actors import Actor
from experiments.choices import RunStatus, State
from experiments.models import Experiment, MetricPoint, Run, TransitionLog
from experiments.selectors_runs import experiment_metric_series
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
    assert run.progress == pytest.approx(1.0) or run.last_step > 0
    steps = MetricPoint.objects.filter(run=run, name="loss").count()
    assert steps == run.checkpoint_step
    assert MetricPoint.objects.filter(run=run, name="accuracy").count() == 2
    events = list(TransitionLog.objects.filter(experiment=experiment).values_list("event", "actor"))
    assert events == [("queue", "system:test"), ("start", "system:scheduler"), ("complete", "system:worker")]
    assert not Device.objects.filter(leased_run__isnull=False).exists()
