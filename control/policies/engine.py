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
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

import control.policies.triggers as triggers
from control.policies.conditions import ConditionResult, EvaluationContext, evaluate_all
from control.policies.models import (
    ActionRole,
    ConditionRole,
    Policy,
    PolicyArm,
    PolicyKind,
    PolicyMode,
    TriggerEvent,
    TriggerStatus,
)
from experiments.choices import RunStatus, State
from experiments.models import Experiment, Run
from experiments.runs.selectors import experiment_metric_series

logger = logging.getLogger(__name__)

# Which policies are consulted on which occasion.
ON_METRICS = (PolicyKind.EARLY_STOP, PolicyKind.CUSTOM)
ON_COMPLETE = (PolicyKind.AUTO_PROMOTE,)


@dataclass(frozen=True)
class Evaluation:
    """One policy checked against one experiment: all passed?, and each condition's result."""

    policy: Policy
    experiment: Experiment
    passed: bool
    results: list[ConditionResult]

    def snapshot(self) -> dict[str, Any]:
        """Return the JSON snapshot stored on a trigger."""
        return {"passed": self.passed, "conditions": [r.as_dict() for r in self.results]}


def production_metrics(*, recipe: str, exclude_experiment_id: int | None = None) -> dict[str, float] | None:
    """Return the final metrics of the model now in production for this recipe, if any.

    Production is the most recently deployed experiment of the recipe; its last successful
    run holds the metrics the regression guard compares against.
    """
    deployed = Experiment.objects.filter(recipe=recipe, state=State.DEPLOYED)
    if exclude_experiment_id is not None:
        deployed = deployed.exclude(pk=exclude_experiment_id)
    current = deployed.order_by("-state_changed_at").first()
    if current is None:
        return None
    run = current.runs.filter(status=RunStatus.SUCCEEDED).order_by("-attempt").first()
    if run is None:
        return None
    return {k: float(v) for k, v in run.final_metrics.items() if isinstance(v, int | float)}


def evaluation_context(
    *,
    experiment: Experiment,
    metric_names: Iterable[str],
    now: datetime | None = None,
    drift_score: float | None = None,
) -> EvaluationContext:
    """Gather the facts a policy's conditions read for one experiment."""
    names = sorted({n for n in metric_names if n})
    series: dict[str, list[tuple[int, float | None]]] = {}
    if names:
        stitched = experiment_metric_series(experiment_id=experiment.pk, names=names)
        series = {name: [(p.step, p.value) for p in points] for name, points in stitched.items()}
    last_retrain = (
        Experiment.objects.filter(parent=experiment)
        .order_by("-created_at")
        .values_list("created_at", flat=True)
        .first()
    )
    if experiment.dataset_version_id is not None and (
        last_retrain is None or experiment.created_at > last_retrain
    ):
        # The experiment is itself a retrain on curated data: its model was retrained when it was
        # created, so once deployed it does not count as "never retrained" and start the loop again.
        last_retrain = experiment.created_at
    return EvaluationContext(
        series=series,
        production_metrics=production_metrics(recipe=experiment.recipe, exclude_experiment_id=experiment.pk),
        last_retrain_at=last_retrain,
        now=now or timezone.now(),
        runs_in_flight=Run.objects.filter(status__in=[RunStatus.STARTING, RunStatus.RUNNING]).count(),
        drift_score=drift_score,
    )


def policy_evaluate(
    *, policy: Policy, experiment: Experiment, now: datetime | None = None, drift_score: float | None = None
) -> Evaluation:
    """Evaluate the policy's "when" conditions against the experiment (reads only)."""
    rows = [c for c in policy.conditions.all() if c.role == ConditionRole.WHEN]
    specs = [row.spec() for row in rows]
    ctx = evaluation_context(
        experiment=experiment, metric_names=[s.metric for s in specs], now=now, drift_score=drift_score
    )
    passed, results = evaluate_all(specs, ctx)
    return Evaluation(policy=policy, experiment=experiment, passed=passed, results=results)


def policies_in_scope(*, experiment: Experiment, kinds: Iterable[str]) -> list[Policy]:
    """Return enabled policies of these kinds that apply to the experiment, in order."""
    candidates: QuerySet[Policy] = Policy.objects.filter(enabled=True, kind__in=list(kinds)).prefetch_related(
        "conditions", "actions"
    )
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
    fired = []
    for policy in policies_in_scope(experiment=experiment, kinds=ON_COMPLETE):
        evaluation = policy_evaluate(policy=policy, experiment=experiment, now=now)
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
