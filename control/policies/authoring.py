"""Authoring policies: create one with its rows (validated), dry-run it, backtest it over history."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import transaction

from control.policies.conditions import EvaluationContext, evaluate_all
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


def policy_dry_run(*, policy: Policy, experiment: Experiment) -> dict[str, Any]:
    """Return each condition's value and pass/fail against the experiment, changing nothing."""
    evaluation = policy_evaluate(policy=policy, experiment=experiment)
    role = ActionRole.THEN if evaluation.passed else ActionRole.FALLBACK
    actions = [str(a) for a in policy.actions.filter(role=role, enabled=True)]
    return {**evaluation.snapshot(), "would_run": actions, "role": role}


def policy_backtest(
    *, policy: Policy, experiments: list[Experiment], max_hits_per_experiment: int = 1
) -> list[BacktestHit]:
    """Replay the policy over past metric histories; list the first step where it would have fired."""
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
