"""The control engine: observation → trigger → policy → action.

It is consulted on every metric batch a worker flushes, on every transition, and by the
beat sweeps. For each policy in scope it evaluates the conditions (control.policies.conditions),
applies cooldown, re-arming and rate limits, records a TriggerEvent with the snapshot
that fired it, and — by the policy's mode — queues the actions, asks for approval, or
only records what it would have done.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

import control.policies.triggers as triggers
from control.policies.gate import Evaluation, evaluation_context, policy_evaluate, production_metrics
from control.policies.models import (
    ActionRole,
    Policy,
    PolicyArm,
    PolicyKind,
    PolicyMode,
    TriggerEvent,
    TriggerStatus,
)
from experiments.choices import State
from experiments.models import EvaluationStatus, Experiment
from experiments.runs.evaluation import experiment_evaluation

logger = logging.getLogger(__name__)

# Re-exported: the canary and the authoring pages judge with the same units.
__all__ = [
    "Evaluation",
    "engine_on_complete",
    "engine_on_drift",
    "engine_on_metrics",
    "engine_on_transition",
    "evaluation_context",
    "policy_evaluate",
    "production_metrics",
    "trigger_fire",
]

# Which policies are consulted on which occasion.
ON_METRICS = (PolicyKind.EARLY_STOP, PolicyKind.CUSTOM)
ON_COMPLETE = (PolicyKind.AUTO_PROMOTE,)


def policies_in_scope(*, experiment: Experiment, kinds: Iterable[str]) -> list[Policy]:
    """Return enabled policies of these kinds that apply to the experiment, in order."""
    # A policy acts on its own project's experiments only.
    candidates: QuerySet[Policy] = Policy.objects.filter(
        Q(project_id=experiment.project_id), enabled=True, kind__in=list(kinds)
    ).prefetch_related("conditions", "actions")
    return [p for p in candidates if p.applies_to(recipe=experiment.recipe, tags=list(experiment.tags or []))]


def _rate_limited(policy: Policy, now: datetime) -> bool:
    recent = TriggerEvent.objects.filter(policy=policy, created_at__gte=now - timedelta(hours=1)).count()
    return recent >= policy.max_fires_per_hour


def arm_allows_firing(policy: Policy, experiment: Experiment, passed: bool, now: datetime) -> bool:
    """Apply hysteresis: fire once when the condition turns true; re-arm only once it cleared.

    The arm row is locked, so two flushes evaluating at once cannot both fire.
    """
    arm, _ = PolicyArm.objects.select_for_update().get_or_create(policy=policy, experiment=experiment)
    if not passed:
        if not arm.armed:
            arm.armed = True
            arm.save(update_fields=["armed"])
        return False
    if not arm.armed:
        return False
    if arm.last_fired_at and now - arm.last_fired_at < timedelta(seconds=policy.cooldown_seconds):
        return False
    arm.armed = False
    arm.last_fired_at = now
    arm.save(update_fields=["armed", "last_fired_at"])
    return True


def trigger_fire(
    *,
    evaluation: Evaluation,
    kind: str,
    use_fallback: bool = False,
    now: datetime | None = None,
    context: dict[str, Any] | None = None,
) -> TriggerEvent:
    """Record a trigger and, by the policy's mode, queue its actions (or their fallback).

    context joins the snapshot (what the trigger saw besides its conditions; a "builtin" list
    of [kind, params] names actions carried out before the policy's own).
    """
    now = now or timezone.now()
    policy = evaluation.policy
    if policy.mode == PolicyMode.DRY_RUN:
        status = TriggerStatus.DRY_RUN
    elif policy.mode == PolicyMode.APPROVE:
        status = TriggerStatus.PENDING_APPROVAL
    else:
        status = TriggerStatus.FIRED
    trigger = TriggerEvent.objects.create(
        policy=policy,
        experiment=evaluation.experiment,
        kind=kind,
        conditions_passed=evaluation.passed,
        snapshot={
            **evaluation.snapshot(),
            **(context or {}),
            "role": ActionRole.FALLBACK if use_fallback else ActionRole.THEN,
        },
        status=status,
        created_at=now,
        expires_at=now + timedelta(seconds=policy.approval_timeout_seconds)
        if status == TriggerStatus.PENDING_APPROVAL
        else None,
    )
    if status == TriggerStatus.FIRED:
        triggers.trigger_queue_actions(trigger=trigger)
    triggers.publish_trigger(trigger)
    return trigger


def _consider(
    policy: Policy, experiment: Experiment, kind: str, now: datetime, drift_score: float | None = None
) -> TriggerEvent | None:
    evaluation = policy_evaluate(policy=policy, experiment=experiment, now=now, drift_score=drift_score)
    with transaction.atomic():
        # Rate-limited: leave the arm as it is, so the experiment still gets its turn later.
        if evaluation.passed and _rate_limited(policy, now):
            logger.info("policy %s is rate limited; not firing for #%s", policy.name, experiment.pk)
            return None
        if not arm_allows_firing(policy, experiment, evaluation.passed, now):
            return None
        return trigger_fire(evaluation=evaluation, kind=kind, now=now)


def engine_on_metrics(*, experiment_id: int, now: datetime | None = None) -> list[TriggerEvent]:
    """Evaluate metric-driven policies (early stop, custom) for a running experiment."""
    now = now or timezone.now()
    experiment = Experiment.objects.filter(pk=experiment_id, state=State.RUNNING).first()
    if experiment is None:
        return []
    fired = []
    for policy in policies_in_scope(experiment=experiment, kinds=ON_METRICS):
        trigger = _consider(policy, experiment, "metrics", now)
        if trigger is not None:
            fired.append(trigger)
    return fired


def engine_on_complete(*, experiment_id: int, now: datetime | None = None) -> list[TriggerEvent]:
    """Decide what happens to a run that finished training: promote, or the fallback (hold).

    Each auto-promote policy in scope fires once per completion: its actions when all
    conditions pass, its fallback actions otherwise.
    """
    now = now or timezone.now()
    experiment = Experiment.objects.filter(pk=experiment_id, state=State.EVALUATING).first()
    if experiment is None:
        return []
    job = experiment_evaluation(experiment=experiment)
    if job is not None and job.status != EvaluationStatus.SUCCEEDED:
        # Pending: decided when its result lands (policies_decide_on_evaluation). Failed: the
        # job held the experiment for review with the reason already.
        logger.info("#%s: decision waits for evaluation %s (%s)", experiment.pk, job.pk, job.status)
        return []
    decided = TriggerEvent.objects.filter(
        experiment=experiment, kind="transition:complete", created_at__gte=experiment.state_changed_at
    )
    if decided.exists():
        # The completion's own message and the evaluation's both ask: the first one decided.
        return []
    fired = []
    for policy in policies_in_scope(experiment=experiment, kinds=ON_COMPLETE):
        # Champion/challenger: the candidate's checkpoint and production's are evaluated on the
        # recipe's held-out set (here, on the control queue) and compared by the policy's conditions.
        evaluation = policy_evaluate(policy=policy, experiment=experiment, now=now, decide=True)
        has_fallback = any(a.role == ActionRole.FALLBACK and a.enabled for a in policy.actions.all())
        if not evaluation.passed and not has_fallback:
            continue
        with transaction.atomic():
            fired.append(
                trigger_fire(
                    evaluation=evaluation,
                    kind="transition:complete",
                    use_fallback=not evaluation.passed,
                    now=now,
                )
            )
        break  # the first policy that decides wins; later ones would fight over the same experiment
    return fired


def engine_on_transition(*, experiment_id: int, event: str) -> list[TriggerEvent]:
    """Evaluate custom policies after any transition (completion has its own path)."""
    if event == "complete":
        return engine_on_complete(experiment_id=experiment_id)
    experiment = Experiment.objects.filter(pk=experiment_id).first()
    if experiment is None:
        return []
    now = timezone.now()
    fired = []
    for policy in policies_in_scope(experiment=experiment, kinds=(PolicyKind.CUSTOM,)):
        trigger = _consider(policy, experiment, f"transition:{event}", now)
        if trigger is not None:
            fired.append(trigger)
    return fired


def engine_on_drift(
    *, experiment_id: int, drift_score: float, now: datetime | None = None
) -> list[TriggerEvent]:
    """Evaluate drift → retrain policies for the experiment whose model serves production."""
    now = now or timezone.now()
    experiment = Experiment.objects.filter(pk=experiment_id).first()
    if experiment is None:
        return []
    fired = []
    for policy in policies_in_scope(experiment=experiment, kinds=(PolicyKind.DRIFT_RETRAIN,)):
        trigger = _consider(policy, experiment, "drift", now, drift_score=drift_score)
        if trigger is not None:
            fired.append(trigger)
    return fired
