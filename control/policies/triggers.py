"""Triggers of the policy layer: queue and run their actions in order, approve, reject, expire."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from control.dispatch import task_send
from control.policies.actions import ACTION_KINDS, ActionContext, ActionFailed, clean_action_params
from control.policies.gate import promotion_rejudge
from control.policies.models import (
    ActionExecution,
    ActionRole,
    ExecutionStatus,
    Policy,
    PolicyKind,
    TriggerEvent,
    TriggerStatus,
)
from experiments.actors import Actor
from experiments.events import TRIGGERS_GROUP, experiment_group, send_to_groups
from experiments.models import Experiment
from experiments.recipes import ConfigError
from experiments.services import TransitionRefused

logger = logging.getLogger(__name__)


def publish_trigger(trigger: TriggerEvent) -> None:
    """After commit, tell the experiment's page and the Triggers page about a trigger."""
    payload = trigger_payload(trigger)
    groups = [TRIGGERS_GROUP]
    if trigger.experiment_id:
        groups.append(experiment_group(trigger.experiment_id))
    transaction.on_commit(lambda: send_to_groups(groups, payload))


def trigger_payload(trigger: TriggerEvent) -> dict[str, Any]:
    """Return the typed websocket payload of a trigger."""
    return {
        "type": "trigger.changed",
        "trigger_id": trigger.pk,
        "experiment_id": trigger.experiment_id,
        "policy": trigger.policy.name,
        "kind": trigger.kind,
        "status": trigger.status,
        "conditions_passed": trigger.conditions_passed,
        "snapshot": trigger.snapshot,
        "created_at": trigger.created_at.isoformat(),
        "executions": [e.as_dict() for e in trigger.executions.all()],
    }


def _dispatch_execution(execution_id: int) -> None:
    try:
        task_send("control.action_execute", args=[execution_id], queue="control")
    except Exception:
        # The broker is away: act here rather than leave the trigger hanging (the claim
        # makes a later redelivery harmless).
        logger.warning("control queue unavailable; executing action %s inline", execution_id)
        action_execute(execution_id=execution_id)


def trigger_queue_actions(*, trigger: TriggerEvent) -> list[ActionExecution]:
    """Create one execution per action of the trigger and start the first after commit.

    The snapshot's builtin actions (a canary's rollback) come first, then the policy's enabled actions
    of the trigger's role. A trigger's actions run one after another, in order, so that a
    later one can use what an earlier one made (retrain on the dataset curate_dataset wrote).
    """
    role = trigger.snapshot.get("role", ActionRole.THEN)
    actor = Actor.policy(trigger.policy.name).label
    executions = []
    for kind, params in trigger.snapshot.get("builtin", []):
        execution, _ = ActionExecution.objects.get_or_create(
            idempotency_key=f"trigger:{trigger.pk}:builtin:{kind}",
            defaults={"trigger": trigger, "kind": kind, "params": params, "actor": actor},
        )
        executions.append(execution)
    for action in trigger.policy.actions.filter(role=role, enabled=True).order_by("order", "id"):
        execution, _ = ActionExecution.objects.get_or_create(
            idempotency_key=f"trigger:{trigger.pk}:action:{action.pk}",
            defaults={
                "trigger": trigger,
                "action": action,
                "kind": action.kind,
                "params": clean_action_params(action.kind, action.params),
                "actor": actor,
            },
        )
        executions.append(execution)
    if not executions:
        TriggerEvent.objects.filter(pk=trigger.pk).update(status=TriggerStatus.ACTED)
    else:
        transaction.on_commit(lambda: _dispatch_next(trigger.pk))
    return executions


def _dispatch_next(trigger_id: int) -> None:
    """Start the trigger's first pending action, unless one of its actions is already running."""
    executions = ActionExecution.objects.filter(trigger_id=trigger_id).order_by("id")
    if executions.filter(status=ExecutionStatus.RUNNING).exists():
        return
    pending = executions.filter(status=ExecutionStatus.PENDING).values_list("pk", flat=True).first()
    if pending is not None:
        _dispatch_execution(pending)


def trigger_execute_now(*, trigger_id: int, user: Any) -> TriggerEvent:
    """A person presses "Execute policy": run the trigger's actions now, as the policy."""
    with transaction.atomic():
        trigger = TriggerEvent.objects.select_for_update().select_related("policy").get(pk=trigger_id)
        if trigger.status not in (
            TriggerStatus.DRY_RUN,
            TriggerStatus.PENDING_APPROVAL,
            TriggerStatus.FAILED,
        ):
            raise TransitionRefusedForTrigger(
                f"Trigger #{trigger.pk} is {trigger.get_status_display().lower()}."
            )
        _decide(trigger, user, TriggerStatus.FIRED)
        trigger_queue_actions(trigger=trigger)
        publish_trigger(trigger)
    return trigger


class TransitionRefusedForTrigger(Exception):
    """The trigger is not in a state where this decision applies."""


def _decide(trigger: TriggerEvent, user: Any, status: str) -> None:
    trigger.status = status
    trigger.decided_at = timezone.now()
    trigger.decided_by = user
    trigger.save(update_fields=["status", "decided_at", "decided_by"])


def trigger_approve(*, trigger_id: int, user: Any) -> TriggerEvent:
    """Approve a pending trigger: its actions run as the policy, and the approver is recorded."""
    with transaction.atomic():
        trigger = TriggerEvent.objects.select_for_update().select_related("policy").get(pk=trigger_id)
        if trigger.status != TriggerStatus.PENDING_APPROVAL:
            raise TransitionRefusedForTrigger(
                f"Trigger #{trigger.pk} is {trigger.get_status_display().lower()}, not pending approval."
            )
        if trigger.expires_at and trigger.expires_at <= timezone.now():
            _decide(trigger, None, TriggerStatus.EXPIRED)
            publish_trigger(trigger)
            raise TransitionRefusedForTrigger(
                f"Trigger #{trigger.pk} expired at {trigger.expires_at:%H:%M:%S}."
            )
        _decide(trigger, user, TriggerStatus.FIRED)
        trigger_queue_actions(trigger=trigger)
        publish_trigger(trigger)
    return trigger


def trigger_reject(*, trigger_id: int, user: Any) -> TriggerEvent:
    """Reject a pending trigger: nothing is done, and who decided is recorded."""
    with transaction.atomic():
        trigger = TriggerEvent.objects.select_for_update().get(pk=trigger_id)
        if trigger.status != TriggerStatus.PENDING_APPROVAL:
            raise TransitionRefusedForTrigger(
                f"Trigger #{trigger.pk} is {trigger.get_status_display().lower()}, not pending approval."
            )
        _decide(trigger, user, TriggerStatus.DISMISSED)
        publish_trigger(trigger)
    return trigger


def triggers_expire(*, now: datetime | None = None) -> int:
    """Expire pending approvals whose timeout passed; return how many."""
    now = now or timezone.now()
    expired = 0
    for trigger in TriggerEvent.objects.filter(status=TriggerStatus.PENDING_APPROVAL, expires_at__lte=now):
        with transaction.atomic():
            claimed = TriggerEvent.objects.filter(
                pk=trigger.pk, status=TriggerStatus.PENDING_APPROVAL
            ).update(status=TriggerStatus.EXPIRED, decided_at=now)
            if claimed == 1:
                trigger.status = TriggerStatus.EXPIRED
                publish_trigger(trigger)
                expired += 1
    return expired


def _reason(trigger: TriggerEvent) -> str:
    return f"{trigger.reason()} [trigger #{trigger.pk}]"


def _canary_applies(experiment: Experiment) -> bool:
    return any(
        p.applies_to(recipe=experiment.recipe, tags=list(experiment.tags or []))
        for p in Policy.objects.filter(
            Q(project_id=experiment.project_id), enabled=True, kind=PolicyKind.CANARY
        )
    )


def _action_context(execution: ActionExecution, trigger: TriggerEvent) -> ActionContext:
    """Return what the action may use of its trigger."""

    def earlier_result(kind: str) -> dict[str, Any] | None:
        return (
            trigger.executions.filter(kind=kind, status=ExecutionStatus.SUCCEEDED)
            .values_list("result", flat=True)
            .first()
        )

    def rejudge(experiment: Experiment) -> str | None:
        policy = trigger.policy
        if policy.kind != PolicyKind.AUTO_PROMOTE:
            return None
        evaluation = promotion_rejudge(policy=policy, experiment=experiment)
        # The trigger shows both judgements: when it fired, and when its promotion ran.
        trigger.snapshot = {**trigger.snapshot, "rejudged": evaluation.snapshot()}
        TriggerEvent.objects.filter(pk=trigger.pk).update(snapshot=trigger.snapshot)
        return None if evaluation.passed else evaluation.failed_reasons()

    return ActionContext(
        experiment=trigger.experiment,
        actor=Actor.policy(trigger.policy.name),
        reason=_reason(trigger),
        params=execution.params,
        policy_name=trigger.policy.name,
        trigger_payload=lambda: trigger_payload(trigger),
        earlier_result=earlier_result,
        canary_applies=_canary_applies,
        rejudge=rejudge,
    )


def action_execute(*, execution_id: int) -> ActionExecution:
    """Run one queued action exactly once (a redelivered task finds it claimed and does nothing)."""
    claimed = ActionExecution.objects.filter(pk=execution_id, status=ExecutionStatus.PENDING).update(
        status=ExecutionStatus.RUNNING, attempts=F("attempts") + 1
    )
    execution = ActionExecution.objects.select_related("trigger__policy", "trigger__experiment").get(
        pk=execution_id
    )
    if claimed != 1:
        return execution
    trigger = execution.trigger
    try:
        result = ACTION_KINDS[execution.kind].perform(_action_context(execution, trigger))
        execution.status = ExecutionStatus.SUCCEEDED
        execution.result = result
    except (TransitionRefused, ActionFailed, PermissionDenied, ValidationError, ConfigError, OSError) as exc:
        execution.status = ExecutionStatus.FAILED
        execution.error = getattr(exc, "message", None) or str(exc)
    except Exception as exc:  # recorded on the execution; the engine must not die with it
        logger.exception("action %s failed", execution.pk)
        execution.status = ExecutionStatus.FAILED
        execution.error = f"{type(exc).__name__}: {exc}"
    execution.finished_at = timezone.now()
    execution.latency_ms = (execution.finished_at - trigger.created_at).total_seconds() * 1000
    execution.save(update_fields=["status", "result", "error", "finished_at", "latency_ms"])
    _settle_trigger(trigger)
    # The next action runs whatever became of this one: a failed notification must not stop a rollback.
    _dispatch_next(trigger.pk)
    return execution


def _settle_trigger(trigger: TriggerEvent) -> None:
    """Mark the trigger acted (or failed) once all its executions finished, and tell the pages."""
    with transaction.atomic():
        statuses = list(trigger.executions.values_list("status", flat=True))
        if any(s in (ExecutionStatus.PENDING, ExecutionStatus.RUNNING) for s in statuses):
            publish_trigger(trigger)
            return
        final = TriggerStatus.FAILED if ExecutionStatus.FAILED in statuses else TriggerStatus.ACTED
        TriggerEvent.objects.filter(pk=trigger.pk).update(status=final)
        trigger.status = final
        publish_trigger(trigger)
