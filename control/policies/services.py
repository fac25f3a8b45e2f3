"""Writes of the policy layer: queue and execute actions, approve/reject/expire triggers, dry-run, backtest."""

from __future__ import annotations

import json
import logging
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from control.policies.actions import clean_action_params
from control.policies.conditions import EvaluationContext, evaluate_all
from control.policies.models import (
    ActionExecution,
    ActionRole,
    CanaryStage,
    ConditionRole,
    ExecutionStatus,
    Policy,
    PolicyAction,
    PolicyCondition,
    PolicyKind,
    TriggerEvent,
    TriggerStatus,
)
from experiments.actors import Actor
from experiments.events import TRIGGERS_GROUP, experiment_group, send_to_groups
from experiments.models import DatasetVersion, Experiment, ModelVersion
from experiments.recipes import ConfigError, get_spec
from experiments.registry.datasets import CurationError, dataset_curate
from experiments.services import (
    TransitionRefused,
    experiment_create,
    experiment_retrain,
    experiment_transition,
)

logger = logging.getLogger(__name__)


class ActionFailed(Exception):
    """An action could not be carried out; the message says why."""


@transaction.atomic
def policy_create(
    *,
    name: str,
    kind: str,
    conditions: list[dict[str, Any]] | None = None,
    actions: list[dict[str, Any]] | None = None,
    stages: list[tuple[str, float, int]] | None = None,
    **fields: Any,
) -> Policy:
    """Create a policy with its condition, action and canary-stage rows, each validated.

    Rows default to role "when" / "then"; a ValidationError keyed by field refuses the whole
    policy (nothing is saved).
    """
    policy = Policy(name=name, kind=kind, **fields)
    policy.full_clean()
    policy.save()
    for order, cond in enumerate(conditions or []):
        condition = PolicyCondition(policy=policy, order=order, **{"role": ConditionRole.WHEN, **cond})
        condition.full_clean()
        condition.save()
    for order, act in enumerate(actions or []):
        action = PolicyAction(policy=policy, order=order, **{"role": ActionRole.THEN, "params": {}, **act})
        action.full_clean()
        action.save()
    for order, (stage_name, pct, seconds) in enumerate(stages or []):
        stage = CanaryStage(
            policy=policy, order=order, name=stage_name, traffic_pct=pct, duration_seconds=seconds
        )
        stage.full_clean()
        stage.save()
    return policy


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
    from control.policies.tasks import action_execute_task

    try:
        action_execute_task.apply_async(args=[execution_id], queue="control")
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
        for p in Policy.objects.filter(enabled=True, kind=PolicyKind.CANARY)
    )


def _perform(execution: ActionExecution, trigger: TriggerEvent) -> dict[str, Any]:
    """Carry out one action through the same services the buttons use."""
    actor = Actor.policy(trigger.policy.name)
    experiment = trigger.experiment
    params = execution.params
    reason = _reason(trigger)
    kind = execution.kind
    if kind in ("cancel", "hold", "rollback"):
        if experiment is None:
            raise ActionFailed(f"{kind} needs an experiment")
        experiment_transition(experiment_id=experiment.pk, event=kind, actor=actor, reason=reason)
        return {"experiment_id": experiment.pk, "event": kind}
    if kind == "promote":
        if experiment is None:
            raise ActionFailed("promote needs an experiment")
        experiment_transition(experiment_id=experiment.pk, event="promote", actor=actor, reason=reason)
        if not _canary_applies(experiment):
            experiment_transition(
                experiment_id=experiment.pk,
                event="deploy",
                actor=actor,
                reason="no canary policy in scope: deployed at once",
            )
            return {"experiment_id": experiment.pk, "event": "promote+deploy"}
        return {"experiment_id": experiment.pk, "event": "promote"}
    if kind == "requeue":
        if experiment is None:
            raise ActionFailed("requeue needs an experiment")
        return _requeue_with_lower_lr(
            experiment.pk,
            float(params.get("lr_factor", 0.5)),
            params.get("config_overrides") or {},
            actor,
            reason,
        )
    if kind == "retrain":
        if experiment is None:
            raise ActionFailed("retrain needs an experiment")
        dataset = _curated_by(trigger) if "extra_data" in get_spec(experiment.recipe).param_names() else None
        child = experiment_retrain(
            experiment_id=experiment.pk,
            actor=actor,
            reason=reason,
            config_overrides=params.get("config_overrides") or {},
            priority_class=params.get("priority_class") or None,
            dataset_version=dataset,
        )
        return {"child_experiment_id": child.pk, "dataset_version_id": dataset.pk if dataset else None}
    if kind == "curate_dataset":
        return _curate(trigger, params, actor)
    if kind == "queue_experiment":
        recipe = params.get("recipe") or (experiment.recipe if experiment else "")
        created = experiment_create(
            name=f"{trigger.policy.name}: {recipe}",
            recipe=recipe,
            config=params.get("config") or {},
            priority_class=params.get("priority_class") or "batch",
            parent=experiment,
            description=reason,
        )
        experiment_transition(experiment_id=created.pk, event="queue", actor=actor, reason=reason)
        return {"experiment_id": created.pk}
    if kind == "notify_email":
        to = [a.strip() for a in str(params.get("to", "")).split(",") if a.strip()]
        subject = params.get("subject") or f"[Crucible] policy {trigger.policy.name} fired"
        body = json.dumps(trigger_payload(trigger), indent=2, default=str)
        sent = send_mail(subject, body, None, to)
        return {"sent": sent, "to": to}
    if kind == "notify_webhook":
        payload = json.dumps(trigger_payload(trigger), default=str).encode()
        request = urllib.request.Request(
            str(params["url"]), data=payload, headers={"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=5) as response:  # the URL was validated as http(s)
            return {"status": response.status}
    raise ActionFailed(f"unknown action kind {kind!r}")


def _curate(trigger: TriggerEvent, params: dict[str, Any], actor: Actor) -> dict[str, Any]:
    """Curate the hard examples of the model the trigger's experiment serves."""
    experiment = trigger.experiment
    if experiment is None:
        raise ActionFailed("curate_dataset needs an experiment")
    version = ModelVersion.objects.filter(experiment=experiment).order_by("-version").first()
    model_name = version.model_name if version else experiment.recipe
    try:
        dataset = dataset_curate(
            model_name=model_name,
            actor_label=actor.label,
            strategy=str(params.get("strategy") or "hard_examples"),
            count=int(params.get("count", 1000)),
            max_confidence=float(params.get("max_confidence", 0.6)),
            source_version=version,
        )
    except CurationError as exc:
        raise ActionFailed(exc.message) from None
    return {"dataset_version_id": dataset.pk, "rows": dataset.row_count, "version": dataset.version}


def _curated_by(trigger: TriggerEvent) -> DatasetVersion | None:
    """Return the dataset an earlier curate_dataset action of this trigger made, if it did."""
    result = (
        trigger.executions.filter(kind="curate_dataset", status=ExecutionStatus.SUCCEEDED)
        .values_list("result", flat=True)
        .first()
    )
    dataset_id = (result or {}).get("dataset_version_id")
    return DatasetVersion.objects.filter(pk=dataset_id).first() if dataset_id else None


def _requeue_with_lower_lr(
    experiment_id: int, factor: float, overrides: dict[str, Any], actor: Actor, reason: str
) -> dict[str, Any]:
    """Scale the learning rate and requeue; the next attempt resumes from the last good checkpoint."""
    with transaction.atomic():
        experiment = Experiment.objects.select_for_update().get(pk=experiment_id)
        old_lr = float(experiment.config.get("lr", 0.0))
        new_lr = old_lr * factor
        config = get_spec(experiment.recipe).clean({**experiment.config, **overrides, "lr": new_lr})
        Experiment.objects.filter(pk=experiment_id).update(config=config)
        experiment_transition(
            experiment_id=experiment_id,
            event="requeue",
            actor=actor,
            reason=f"{reason}; lr {old_lr:g} → {new_lr:g}",
        )
    return {"experiment_id": experiment_id, "lr": [old_lr, new_lr]}


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
        result = _perform(execution, trigger)
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


@dataclass(frozen=True)
class BacktestHit:
    """Where replaying a policy over an experiment's history would have fired."""

    experiment_id: int
    experiment_name: str
    step: int
    conditions: list[dict[str, Any]]


def policy_dry_run(*, policy: Policy, experiment: Experiment) -> dict[str, Any]:
    """Return each condition's value and pass/fail against the experiment, changing nothing."""
    from control.policies.engine import policy_evaluate

    evaluation = policy_evaluate(policy=policy, experiment=experiment)
    role = ActionRole.THEN if evaluation.passed else ActionRole.FALLBACK
    actions = [str(a) for a in policy.actions.filter(role=role, enabled=True)]
    return {**evaluation.snapshot(), "would_run": actions, "role": role}


def policy_backtest(
    *, policy: Policy, experiments: list[Experiment], max_hits_per_experiment: int = 1
) -> list[BacktestHit]:
    """Replay the policy over past metric histories; list the first step where it would have fired."""
    from control.policies.engine import evaluation_context

    specs = [c.spec() for c in policy.conditions.all() if c.role == ConditionRole.WHEN]
    names = [s.metric for s in specs if s.metric]
    hits: list[BacktestHit] = []
    for experiment in experiments:
        full = evaluation_context(experiment=experiment, metric_names=names)
        steps = sorted({step for points in full.series.values() for step, _ in points})
        found = 0
        armed = True
        for step in steps:
            ctx = EvaluationContext(
                series={n: [p for p in pts if p[0] <= step] for n, pts in full.series.items()},
                production_metrics=full.production_metrics,
                last_retrain_at=full.last_retrain_at,
                now=full.now,
                runs_in_flight=full.runs_in_flight,
            )
            passed, results = evaluate_all(specs, ctx)
            if passed and armed:
                hits.append(BacktestHit(experiment.pk, experiment.name, step, [r.as_dict() for r in results]))
                found += 1
                armed = False
                if found >= max_hits_per_experiment:
                    break
            elif not passed:
                armed = True
    return hits
