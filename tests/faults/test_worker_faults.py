"""Ordinary faults of a worker lose nothing: killed (SIGKILL) or stopped (SIGTERM) mid-run.

Real processes throughout: a Celery worker trains a small digits run (4 epochs of 23 steps, a
checkpoint after each epoch), the fault hits it in the second epoch, a fresh worker takes over.
Each test prints one JSON line with what the fault cost (points lost, attempts spent, seconds
to recover); they are measured, never asserted as durations, except the stop timeout a
launcher relies on.
"""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import pytest
from django.test import override_settings

from control.models import Device, Worker
from control.scheduling.services import watchdog_sweep
from experiments.actors import Actor
from experiments.choices import Interruption, RunStatus, State
from experiments.models import Experiment, MetricPoint, Run, TransitionLog
from experiments.recipes import get_spec
from experiments.recipes.local import LocalRunContext
from experiments.runs.selectors import experiment_metric_series
from experiments.services import experiment_create, experiment_transition
from tests.conftest import WORKER_ENV, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker, pytest.mark.fault]

EPOCHS = 4
STEPS_PER_EPOCH = 23  # digits: 1437 training rows in batches of 64
TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH
CONFIG: dict[str, Any] = {"epochs": EPOCHS, "batch_size": 64}
STOP_TIMEOUT_S = float(WORKER_ENV["CRUCIBLE_STOP_TIMEOUT_S"])


def _queued_digits(name: str) -> Experiment:
    # The delay makes the run last a few seconds, so that the fault lands mid-epoch.
    experiment = experiment_create(
        name=name, recipe="digits", config={**CONFIG, "step_delay_ms": 25}, max_attempts=3
    )
    experiment_transition(experiment_id=experiment.pk, event="queue", actor=Actor.system("test"))
    return experiment


def _training_past(experiment: Experiment, step: int) -> Run | None:
    run = Run.objects.filter(experiment=experiment, attempt=1, status=RunStatus.RUNNING).first()
    if run is None:
        return None
    return run if MetricPoint.objects.filter(run=run, name="loss", step__gte=step).exists() else None


def _state(experiment: Experiment) -> str:
    experiment.refresh_from_db()
    return str(experiment.state)


def _reference_metrics() -> dict[str, float]:
    """Return the final metrics of the same run trained without any fault (in this process)."""
    result = get_spec("digits").load().train(LocalRunContext(), dict(CONFIG))
    return result.final_metrics


def _assert_lands_where_an_unfaulted_run_lands(experiment: Experiment, run: Run) -> None:
    assert _state(experiment) == State.EVALUATING
    reference = _reference_metrics()
    for name in ("loss", "val_loss", "accuracy", "f1"):
        assert run.final_metrics[name] == pytest.approx(reference[name], rel=1e-4, abs=1e-6), name


def _series_steps(experiment: Experiment) -> list[int]:
    return [p.step for p in experiment_metric_series(experiment_id=experiment.pk, names=["loss"])["loss"]]


def _report(fault: str, **figures: Any) -> None:
    print(json.dumps({"fault": fault, **figures}))


@override_settings(HEARTBEAT_TIMEOUT_SECONDS=3, WORKER_OFFLINE_SECONDS=3)
def test_a_killed_worker_s_run_resumes_on_a_new_worker_without_spending_an_attempt(
    start_celery_worker: Any,
) -> None:
    first_worker = start_celery_worker()
    experiment = _queued_digits("digits killed")
    # Past the first epoch's checkpoint (step 23) and a few steps into the second.
    wait_for(lambda: _training_past(experiment, 28), timeout=90, what="training past the first checkpoint")

    first_worker.kill(signal.SIGKILL)
    killed = time.monotonic()
    start_celery_worker()

    def interrupted() -> bool:
        watchdog_sweep()  # beat's job in production, every WATCHDOG_SECONDS
        return Run.objects.filter(experiment=experiment, attempt=1, status=RunStatus.INTERRUPTED).exists()

    wait_for(interrupted, timeout=30, interval=0.25, what="the watchdog to notice the lost worker")
    wait_for(
        lambda: Run.objects.filter(experiment=experiment, attempt=2, status=RunStatus.RUNNING).exists(),
        timeout=60,
        what="the next attempt to start on the new worker",
    )
    recovered_in = time.monotonic() - killed
    wait_for(lambda: _state(experiment) == State.EVALUATING, timeout=90, what="the run to complete")

    first, second = Run.objects.filter(experiment=experiment).order_by("attempt")
    assert first.status == RunStatus.INTERRUPTED and first.interruption == Interruption.WORKER_LOST
    assert first.checkpoint_step is not None and first.checkpoint_step >= STEPS_PER_EPOCH
    assert second.status == RunStatus.SUCCEEDED and second.worker != first.worker
    assert second.resumed_from_step == first.checkpoint_step
    # Every step once in the experiment's series; the second attempt trained only what the
    # checkpoint did not hold (steps the killed attempt logged after it are superseded).
    steps = _series_steps(experiment)
    assert steps == list(range(1, TOTAL_STEPS + 1))
    assert not MetricPoint.objects.filter(run=second, name="loss", step__lte=first.checkpoint_step).exists()
    assert MetricPoint.objects.filter(run=second, name="loss").count() == TOTAL_STEPS - first.checkpoint_step
    _assert_lands_where_an_unfaulted_run_lands(experiment, second)
    assert experiment.attempts_spent() == 0 and experiment.interruptions_last_hour() == 1
    events = list(TransitionLog.objects.filter(experiment=experiment).values_list("event", "actor"))
    assert [e for e, _ in events] == ["queue", "start", "requeue", "start", "complete"]
    assert events[2][1] == "system:watchdog"
    # The killed worker's lease was taken back; the only lease left may be the evaluation job's
    # (a slot leased to the trained attempt), and that one is freed when the job ends.
    assert not Device.objects.filter(leased_run=first).exists()
    wait_for(
        lambda: not Device.objects.filter(leased_run__isnull=False).exists(), timeout=60, what="leases freed"
    )
    retrained = MetricPoint.objects.filter(run=first, name="loss", step__gt=first.checkpoint_step).count()
    _report(
        "worker SIGKILL",
        points_lost=TOTAL_STEPS - len(set(steps)),
        attempts_spent=experiment.attempts_spent(),
        steps_retrained_after_checkpoint=retrained,
        seconds_to_recover=round(recovered_in, 2),
    )


def test_a_stopped_worker_checkpoints_at_its_step_and_the_next_worker_resumes_from_there(
    start_celery_worker: Any,
) -> None:
    first_worker = start_celery_worker()
    experiment = _queued_digits("digits stopped")
    wait_for(lambda: _training_past(experiment, 28), timeout=90, what="training past the first checkpoint")

    # To the main process only, as the launcher does: the worker must pass the stop on to the
    # pool process that trains.
    exited_in = first_worker.terminate(timeout=STOP_TIMEOUT_S + 15)

    assert exited_in < STOP_TIMEOUT_S
    first = Run.objects.get(experiment=experiment, attempt=1)
    assert first.status == RunStatus.INTERRUPTED and first.interruption == Interruption.SHUTDOWN
    # Checkpointed where it stood, not at the last periodic checkpoint (step 23): nothing lost.
    assert first.checkpoint_step is not None and first.checkpoint_step > STEPS_PER_EPOCH
    assert first.checkpoint_step == first.last_step
    logged = list(
        MetricPoint.objects.filter(run=first, name="loss").order_by("step").values_list("step", flat=True)
    )
    assert logged == list(range(1, first.checkpoint_step + 1))
    assert _state(experiment) == State.QUEUED
    assert experiment.attempts_spent() == 0
    requeue = TransitionLog.objects.filter(experiment=experiment).last()
    assert requeue is not None and requeue.event == "requeue" and requeue.actor == "system:worker"
    assert "worker shut down" in requeue.reason and "without spending an attempt" in requeue.reason
    assert not Worker.objects.get(hostname=first_worker.hostname).online
    assert not Device.objects.filter(leased_run__isnull=False).exists()

    restarted = time.monotonic()
    start_celery_worker()
    wait_for(
        lambda: Run.objects.filter(experiment=experiment, attempt=2, status=RunStatus.RUNNING).exists(),
        timeout=60,
        what="the next attempt to start on the new worker",
    )
    recovered_in = time.monotonic() - restarted
    wait_for(lambda: _state(experiment) == State.EVALUATING, timeout=90, what="the run to complete")

    second = Run.objects.get(experiment=experiment, attempt=2)
    assert second.status == RunStatus.SUCCEEDED
    assert second.resumed_from_step == first.checkpoint_step
    # Every step stored exactly once across both attempts: none lost, none trained twice.
    stored = sorted(
        MetricPoint.objects.filter(experiment=experiment, name="loss").values_list("step", flat=True)
    )
    assert stored == list(range(1, TOTAL_STEPS + 1))
    _assert_lands_where_an_unfaulted_run_lands(experiment, second)
    assert experiment.attempts_spent() == 0 and experiment.interruptions_last_hour() == 1
    assert [e for (e,) in TransitionLog.objects.filter(experiment=experiment).values_list("event")] == [
        "queue",
        "start",
        "requeue",
        "start",
        "complete",
    ]
    _report(
        "worker SIGTERM",
        points_lost=TOTAL_STEPS - len(set(stored)),
        attempts_spent=experiment.attempts_spent(),
        checkpoint_step=first.checkpoint_step,
        seconds_to_exit=round(exited_in, 2),
        stop_timeout_s=STOP_TIMEOUT_S,
        seconds_to_resume_after_restart=round(recovered_in, 2),
    )


@override_settings(HEARTBEAT_TIMEOUT_SECONDS=3, WORKER_OFFLINE_SECONDS=3)
def test_a_run_that_cannot_stop_in_time_is_killed_at_the_stop_timeout_and_requeued_unspent(
    start_celery_worker: Any,
) -> None:
    stop_timeout = 3.0
    worker = start_celery_worker(CRUCIBLE_STOP_TIMEOUT_S=str(stop_timeout))
    # Five seconds between two looks at the stop request: longer than the worker may take.
    experiment = experiment_create(
        name="digits slow steps", recipe="digits", config={**CONFIG, "step_delay_ms": 5000}, max_attempts=1
    )
    experiment_transition(experiment_id=experiment.pk, event="queue", actor=Actor.system("test"))
    wait_for(lambda: _training_past(experiment, 1), timeout=90, what="the first step")

    exited_in = worker.terminate(timeout=30)

    def interrupted() -> Run | None:
        watchdog_sweep()
        return Run.objects.filter(experiment=experiment, attempt=1, status=RunStatus.INTERRUPTED).first()

    run = wait_for(interrupted, timeout=30, interval=0.25, what="the watchdog to notice the killed run")
    # Lost, not shut down with a checkpoint: the pool process was killed at the stop timeout
    # (less the parent's allowance), in the middle of its five-second step. How long the parent
    # then takes to exit is its interpreter's teardown (reported below).
    assert run.interruption == Interruption.WORKER_LOST
    assert "did not stop within the stop timeout: killing them" in worker.logs()
    assert _state(experiment) == State.QUEUED  # max_attempts=1, and still not spent
    assert experiment.attempts_spent() == 0
    _report(
        "worker SIGTERM, a step longer than the stop timeout",
        seconds_to_exit=round(exited_in, 2),
        stop_timeout_s=stop_timeout,
    )
