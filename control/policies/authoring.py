"""Authoring policies: create one with its rows (validated), dry-run it, backtest it over history."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import transaction

from control.policies.conditions import ConditionSpec, EvaluationContext, condition_shortfall, evaluate_all
from control.policies.engine import evaluation_context, policy_evaluate
from control.policies.models import (
    ActionRole,
    CanaryStage,
    ConditionRole,
    Policy,
    PolicyAction,
    PolicyCondition,
)
from experiments.models import Experiment


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


@dataclass(frozen=True)
class BacktestHit:
    """Where replaying a policy over an experiment's history would have fired."""

    experiment_id: int
    experiment_name: str
    step: int
    conditions: list[dict[str, Any]]


@dataclass(frozen=True)
class NearMiss:
    """An experiment the policy never fired for, and the closest each condition came to holding."""

    experiment_id: int
    experiment_name: str
    # {condition, value, step, short_by, held}: the value with the smallest shortfall, and where.
    conditions: list[dict[str, Any]]


def _when_specs(policy: Policy) -> list[ConditionSpec]:
    return [c.spec() for c in policy.conditions.all() if c.role == ConditionRole.WHEN]


def policy_dry_run(
    *,
    policy: Policy,
    experiment: Experiment,
    conditions: list[PolicyCondition] | None = None,
    actions: list[PolicyAction] | None = None,
) -> dict[str, Any]:
    """Return each condition's value, pass/fail and shortfall against the experiment, changing nothing.

    short_by is how far a failing condition's value is from its threshold (the near miss).
    conditions and actions, when given, are unsaved rows that stand in for the stored ones (the
    policy page previews an edit before it is saved).
    """
    evaluation = policy_evaluate(policy=policy, experiment=experiment, conditions=conditions)
    role = ActionRole.THEN if evaluation.passed else ActionRole.FALLBACK
    rows = list(policy.actions.all()) if actions is None else actions
    would_run = [str(a) for a in rows if a.role == role and a.enabled]
    when = [
        c.spec()
        for c in (policy.conditions.all() if conditions is None else conditions)
        if c.role == ConditionRole.WHEN
    ]
    snapshot = evaluation.snapshot()
    for row, spec, result in zip(snapshot["conditions"], when, evaluation.results, strict=True):
        row["short_by"] = condition_shortfall(spec, result)
    return {**snapshot, "would_run": would_run, "role": role}


def policy_backtest(
    *, policy: Policy, experiments: list[Experiment], max_hits_per_experiment: int = 1
) -> list[BacktestHit]:
    """Replay the policy over past metric histories; list the first step where it would have fired."""
    return policy_backtest_report(
        policy=policy, experiments=experiments, max_hits_per_experiment=max_hits_per_experiment
    )[0]


def policy_backtest_report(
    *, policy: Policy, experiments: list[Experiment], max_hits_per_experiment: int = 1
) -> tuple[list[BacktestHit], list[NearMiss]]:
    """Replay the policy over past metric histories: where it would have fired, and near misses.

    For each experiment it never fired for, every condition's closest value over the replay
    (the smallest shortfall from its threshold) and the step it came at.
    """
    specs = _when_specs(policy)
    names = [s.metric for s in specs if s.metric]
    hits: list[BacktestHit] = []
    misses: list[NearMiss] = []
    for experiment in experiments:
        full, _, _ = evaluation_context(experiment=experiment, metric_names=names)
        steps = sorted({step for points in full.series.values() for step, _ in points})
        found = 0
        armed = True
        closest: list[dict[str, Any]] = [
            {"condition": spec.describe(), "value": None, "step": None, "short_by": None, "held": False}
            for spec in specs
        ]
        for step in steps:
            ctx = EvaluationContext(
                series={n: [p for p in pts if p[0] <= step] for n, pts in full.series.items()},
                production_metrics=full.production_metrics,
                production_label=full.production_label,
                last_retrain_at=full.last_retrain_at,
                now=full.now,
                runs_in_flight=full.runs_in_flight,
                metric_better=full.metric_better,
            )
            passed, results = evaluate_all(specs, ctx)
            for near, spec, result in zip(closest, specs, results, strict=True):
                short = condition_shortfall(spec, result)
                near["held"] = near["held"] or result.passed
                if short is not None and (near["short_by"] is None or short < near["short_by"]):
                    near.update(value=result.as_dict()["value"], step=step, short_by=short)
            if passed and armed:
                hits.append(BacktestHit(experiment.pk, experiment.name, step, [r.as_dict() for r in results]))
                found += 1
                armed = False
                if found >= max_hits_per_experiment:
                    break
            elif not passed:
                armed = True
        if not found and steps:
            misses.append(NearMiss(experiment.pk, experiment.name, closest))
    return hits, misses
