"""The control engine: auto-promote with its regression guard, modes, cooldown, idempotent actions."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from control.policies.authoring import policy_backtest, policy_dry_run
from control.policies.engine import engine_on_complete, engine_on_metrics
from control.policies.models import (
    ActionExecution,
    ActionRole,
    ExecutionStatus,
    PolicyKind,
    PolicyMode,
    TriggerEvent,
    TriggerStatus,
)
from control.policies.triggers import (
    TransitionRefusedForTrigger,
    action_execute,
    trigger_approve,
    trigger_reject,
    triggers_expire,
)
from experiments.choices import State
from experiments.models import Experiment, TransitionLog
from tests.policies.helpers import (
    add_points,
    experiment_through,
    make_policy,
    record_run,
    run_pending_actions,
)

pytestmark = pytest.mark.django_db

TRAINED = ("queue", "start", "complete")


def auto_promote(**fields: object) -> None:
    make_policy(
        "auto_promote",
        PolicyKind.AUTO_PROMOTE,
        [
            {"kind": "metric", "metric": "accuracy", "operator": ">", "threshold": 0.9},
            {"kind": "metric", "metric": "f1", "operator": ">", "threshold": 0.85},
            {"kind": "regression", "metric": "val_loss", "threshold": 0.05},
        ],
        [{"kind": "promote"}, {"kind": "hold", "role": ActionRole.FALLBACK}],
        **fields,
    )


def trained(name: str, accuracy: float, f1: float, val_loss: float) -> Experiment:
    experiment = experiment_through(*TRAINED, name=name)
    record_run(experiment, {"accuracy": [0.5, accuracy], "f1": [0.4, f1], "val_loss": [1.0, val_loss]})
    return experiment


def state(experiment: Experiment) -> str:
    return str(Experiment.objects.get(pk=experiment.pk).state)


def test_a_run_that_passes_is_promoted_and_deployed_by_the_policy() -> None:
    auto_promote()
    experiment = trained("good", accuracy=0.97, f1=0.96, val_loss=0.1)

    [trigger] = engine_on_complete(experiment_id=experiment.pk)
    assert trigger.conditions_passed and trigger.status == TriggerStatus.FIRED
    [execution] = run_pending_actions()

    assert execution.status == ExecutionStatus.SUCCEEDED, execution.error
    assert state(experiment) == State.DEPLOYED  # no canary policy in scope
    promote = TransitionLog.objects.get(experiment=experiment, event="promote")
    assert promote.actor == "policy:auto_promote"
    assert "latest accuracy > 0.9" in promote.reason and f"trigger #{trigger.pk}" in promote.reason
    trigger.refresh_from_db()
    assert trigger.status == TriggerStatus.ACTED
    assert execution.latency_ms is not None and execution.latency_ms >= 0


def test_a_run_that_regresses_against_production_is_held_for_review() -> None:
    auto_promote()
    production = trained("production", accuracy=0.97, f1=0.96, val_loss=0.10)
    for event in ("promote", "deploy"):
        from experiments.services import experiment_transition
        from tests.policies.helpers import SYSTEM

        experiment_transition(experiment_id=production.pk, event=event, actor=SYSTEM)
    candidate = trained("candidate", accuracy=0.95, f1=0.94, val_loss=0.12)  # 20% worse loss

    [trigger] = engine_on_complete(experiment_id=candidate.pk)
    run_pending_actions()

    assert not trigger.conditions_passed
    regression = trigger.snapshot["conditions"][2]
    assert regression["passed"] is False and "vs production 0.1" in regression["detail"]
    assert state(candidate) == State.COMPLETED
    assert TransitionLog.objects.get(experiment=candidate, event="hold").actor == "policy:auto_promote"


def test_approval_mode_waits_for_a_person_and_records_who_approved() -> None:
    from django.contrib.auth.models import User

    auto_promote(mode=PolicyMode.APPROVE, approval_timeout_seconds=600)
    experiment = trained("needs approval", accuracy=0.97, f1=0.96, val_loss=0.1)
    [trigger] = engine_on_complete(experiment_id=experiment.pk)

    assert trigger.status == TriggerStatus.PENDING_APPROVAL
    assert not ActionExecution.objects.exists()
    assert state(experiment) == State.EVALUATING

    lead = User.objects.create_user("lead")
    trigger_approve(trigger_id=trigger.pk, user=lead)
    run_pending_actions()
    trigger.refresh_from_db()
    assert (trigger.status, trigger.decided_by) == (TriggerStatus.ACTED, lead)
    assert state(experiment) == State.DEPLOYED
    with pytest.raises(TransitionRefusedForTrigger):
        trigger_reject(trigger_id=trigger.pk, user=lead)


def test_an_unanswered_approval_expires_after_its_timeout() -> None:
    from django.contrib.auth.models import User

    auto_promote(mode=PolicyMode.APPROVE, approval_timeout_seconds=60)
    experiment = trained("forgotten", accuracy=0.97, f1=0.96, val_loss=0.1)
    [trigger] = engine_on_complete(experiment_id=experiment.pk)

    assert triggers_expire(now=timezone.now() + timedelta(seconds=30)) == 0
    assert triggers_expire(now=timezone.now() + timedelta(seconds=61)) == 1
    trigger.refresh_from_db()
    assert trigger.status == TriggerStatus.EXPIRED
    with pytest.raises(TransitionRefusedForTrigger):
        trigger_approve(trigger_id=trigger.pk, user=User.objects.create_user("late"))
    assert state(experiment) == State.EVALUATING
    assert not ActionExecution.objects.exists()


def test_dry_run_mode_records_what_it_would_do_and_does_nothing() -> None:
    auto_promote(mode=PolicyMode.DRY_RUN)
    experiment = trained("dry", accuracy=0.97, f1=0.96, val_loss=0.1)
    [trigger] = engine_on_complete(experiment_id=experiment.pk)
    assert trigger.status == TriggerStatus.DRY_RUN
    assert not ActionExecution.objects.exists()
    assert state(experiment) == State.EVALUATING


def test_an_action_runs_once_however_often_it_is_delivered() -> None:
    auto_promote()
    experiment = trained("once", accuracy=0.97, f1=0.96, val_loss=0.1)
    engine_on_complete(experiment_id=experiment.pk)
    execution = ActionExecution.objects.get()
    action_execute(execution_id=execution.pk)
    again = action_execute(execution_id=execution.pk)
    assert again.attempts == 1 and again.status == ExecutionStatus.SUCCEEDED
    assert TransitionLog.objects.filter(experiment=experiment, event="promote").count() == 1
    assert ActionExecution.objects.filter(idempotency_key=execution.idempotency_key).count() == 1


def test_a_policy_out_of_scope_is_not_consulted() -> None:
    auto_promote(scope_recipes=["distill"])
    experiment = trained("digits run", accuracy=0.97, f1=0.96, val_loss=0.1)
    assert engine_on_complete(experiment_id=experiment.pk) == []


def test_a_condition_flapping_around_its_threshold_fires_once() -> None:
    make_policy(
        "loss_guard",
        PolicyKind.EARLY_STOP,
        [{"kind": "metric", "metric": "loss", "operator": ">", "threshold": 2.0}],
        [{"kind": "cancel"}],
        mode=PolicyMode.DRY_RUN,
        cooldown_seconds=300,
    )
    experiment = experiment_through("queue", "start", name="flappy")
    run = record_run(experiment, {"loss": [1.0]})
    fired = []
    for step, value in enumerate([2.5, 1.5, 2.5, 1.5, 2.5, 1.9, 2.1], start=2):
        add_points(run, "loss", [value], first_step=step)
        fired += engine_on_metrics(experiment_id=experiment.pk)
    assert len(fired) == 1
    assert fired[0].snapshot["conditions"][0]["value"] == 2.5


def test_it_fires_again_after_clearing_once_the_cooldown_passed() -> None:
    make_policy(
        "loss_guard",
        PolicyKind.EARLY_STOP,
        [{"kind": "metric", "metric": "loss", "operator": ">", "threshold": 2.0}],
        [{"kind": "cancel"}],
        mode=PolicyMode.DRY_RUN,
        cooldown_seconds=60,
    )
    experiment = experiment_through("queue", "start", name="slow flapper")
    run = record_run(experiment, {"loss": [2.5]})
    t0 = timezone.now()
    assert len(engine_on_metrics(experiment_id=experiment.pk, now=t0)) == 1
    add_points(run, "loss", [1.0], first_step=2)
    assert engine_on_metrics(experiment_id=experiment.pk, now=t0 + timedelta(seconds=10)) == []
    add_points(run, "loss", [3.0], first_step=3)
    assert (
        engine_on_metrics(experiment_id=experiment.pk, now=t0 + timedelta(seconds=20)) == []
    )  # cooling down
    # Cleared once since it fired, so it is armed again: it fires as soon as the cooldown ends...
    assert len(engine_on_metrics(experiment_id=experiment.pk, now=t0 + timedelta(seconds=61))) == 1
    # ...and not again while the condition holds without clearing.
    assert engine_on_metrics(experiment_id=experiment.pk, now=t0 + timedelta(seconds=200)) == []
    assert TriggerEvent.objects.count() == 2


def test_dry_run_and_backtest_explain_without_changing_anything() -> None:
    policy = make_policy(
        "nan_guard",
        PolicyKind.EARLY_STOP,
        [{"kind": "not_finite", "metric": "loss"}],
        [{"kind": "requeue", "params": {"lr_factor": 0.5}}],
    )
    diverged = experiment_through("queue", "start", name="diverged")
    record_run(diverged, {"loss": [1.0, 0.8, None, None]}, status="running")
    healthy = experiment_through("queue", "start", name="healthy")
    record_run(healthy, {"loss": [1.0, 0.8, 0.6]}, status="running")

    result = policy_dry_run(policy=policy, experiment=diverged)
    assert result["passed"] is True and result["would_run"] == ["requeue {'lr_factor': 0.5}"]
    assert result["conditions"][0]["condition"] == "loss is NaN or infinite"

    hits = policy_backtest(policy=policy, experiments=[diverged, healthy])
    assert [(h.experiment_id, h.step) for h in hits] == [(diverged.pk, 3)]
    assert not TriggerEvent.objects.exists()
    assert state(diverged) == State.RUNNING


def test_the_rate_limit_caps_fires_across_experiments() -> None:
    make_policy(
        "nan_guard",
        PolicyKind.EARLY_STOP,
        [{"kind": "not_finite", "metric": "loss"}],
        [{"kind": "cancel"}],
        mode=PolicyMode.DRY_RUN,
        max_fires_per_hour=2,
    )
    fired = []
    for index in range(4):
        experiment = experiment_through("queue", "start", name=f"diverged {index}")
        record_run(experiment, {"loss": [1.0, None]}, status="running")
        fired += engine_on_metrics(experiment_id=experiment.pk)
    assert len(fired) == 2


def test_a_rate_limited_experiment_still_gets_its_turn_when_the_hour_has_passed() -> None:
    make_policy(
        "nan_guard",
        PolicyKind.EARLY_STOP,
        [{"kind": "not_finite", "metric": "loss"}],
        [{"kind": "cancel"}],
        mode=PolicyMode.DRY_RUN,
        max_fires_per_hour=1,
    )
    first = experiment_through("queue", "start", name="first")
    record_run(first, {"loss": [None]}, status="running")
    second = experiment_through("queue", "start", name="second")
    record_run(second, {"loss": [None]}, status="running")
    t0 = timezone.now()
    assert len(engine_on_metrics(experiment_id=first.pk, now=t0)) == 1
    assert engine_on_metrics(experiment_id=second.pk, now=t0) == []
    later = t0 + timedelta(hours=1, seconds=1)
    TriggerEvent.objects.update(created_at=t0)
    assert len(engine_on_metrics(experiment_id=second.pk, now=later)) == 1
