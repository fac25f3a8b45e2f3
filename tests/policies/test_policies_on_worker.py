"""Policies acting on live runs, through real Celery workers and Redis."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from control.policies.models import ActionRole, ExecutionStatus, PolicyKind, TriggerEvent, TriggerStatus
from experiments.actors import Actor
from experiments.choices import RunStatus, State
from experiments.models import Experiment, Run, TransitionLog
from experiments.runs.selectors import experiment_metric_series
from experiments.services import experiment_create, experiment_transition
from tests.conftest import WorkerHandle, wait_for
from tests.policies.helpers import make_policy

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


def _state(experiment: Experiment) -> str:
    experiment.refresh_from_db()
    return str(experiment.state)


def test_a_good_digits_run_is_promoted_and_deployed_on_its_own(
    start_celery_worker: Callable[..., WorkerHandle],
) -> None:
    start = start_celery_worker
    start()  # trains
    start()  # keeps the control queue moving while the other one trains
    make_policy(
        "auto_promote",
        PolicyKind.AUTO_PROMOTE,
        [
            {"kind": "metric", "metric": "accuracy", "operator": ">", "threshold": 0.9},
            {"kind": "metric", "metric": "f1", "operator": ">", "threshold": 0.85},
            {"kind": "regression", "metric": "val_loss", "threshold": 0.05},
        ],
        [{"kind": "promote"}, {"kind": "hold", "role": ActionRole.FALLBACK}],
    )
    experiment = experiment_create(name="auto", recipe="digits", config={"epochs": 6})
    experiment_transition(experiment_id=experiment.pk, event="queue", actor=Actor.system("test"))

    wait_for(lambda: _state(experiment) == State.DEPLOYED, timeout=90, what="deployed by the policy")

    trigger = wait_for(
        lambda: TriggerEvent.objects.filter(experiment=experiment, status=TriggerStatus.ACTED).first(),
        timeout=10,
        what="the trigger to settle",
    )
    assert trigger.conditions_passed
    assert trigger.executions.get().status == ExecutionStatus.SUCCEEDED
    actors = dict(TransitionLog.objects.filter(experiment=experiment).values_list("event", "actor"))
    assert actors["promote"] == actors["deploy"] == "policy:auto_promote"


def test_a_nan_loss_is_stopped_and_requeued_with_half_the_learning_rate_from_the_last_good_checkpoint(
    start_celery_worker: Callable[..., WorkerHandle],
) -> None:
    start = start_celery_worker
    workers: list[WorkerHandle] = [start(), start()]
    make_policy(
        "early_stop",
        PolicyKind.EARLY_STOP,
        [{"kind": "not_finite", "metric": "loss"}],
        [{"kind": "requeue", "params": {"lr_factor": 0.5, "config_overrides": {"inject_nan_at_step": -1}}}],
        cooldown_seconds=60,
    )
    # 23 steps per epoch: a good checkpoint at step 23, NaN from step 30 on.
    experiment = experiment_create(
        name="diverges",
        recipe="digits",
        config={"epochs": 3, "lr": 0.004, "inject_nan_at_step": 30, "step_delay_ms": 20},
    )
    experiment_transition(experiment_id=experiment.pk, event="queue", actor=Actor.system("test"))

    wait_for(
        lambda: _state(experiment) == State.EVALUATING, timeout=120, what="the retrained attempt to finish"
    )

    first, second = Run.objects.filter(experiment=experiment).order_by("attempt")
    assert first.status != RunStatus.SUCCEEDED
    assert first.checkpoint_step == 23  # weights went NaN after that: no later checkpoint
    assert second.status == RunStatus.SUCCEEDED
    assert second.resumed_from_step == 23
    assert second.config["lr"] == pytest.approx(0.002)
    assert second.config["inject_nan_at_step"] == -1
    requeue = TransitionLog.objects.get(experiment=experiment, event="requeue")
    assert requeue.actor == "policy:early_stop"
    assert "loss is NaN or infinite" in requeue.reason and "lr 0.004 → 0.002" in requeue.reason
    loss = experiment_metric_series(experiment_id=experiment.pk, names=["loss"])["loss"]
    assert [p.step for p in loss] == list(range(1, 3 * 23 + 1))  # each step once, across attempts
    assert all(p.value is not None for p in loss)  # the NaN steps were trained again
    trigger = TriggerEvent.objects.get(experiment=experiment)
    latency = trigger.executions.get().latency_ms
    assert latency is not None and latency < 5000, [w.logs()[-2000:] for w in workers]
