"""Celery tasks of the policy layer: thin wrappers that take ids and call one service."""

from __future__ import annotations

from celery import shared_task

import control.policies.triggers as triggers
from control.policies.drift import drift_sweep
from control.policies.engine import engine_on_metrics, engine_on_transition
from experiments.registry.evaluation import model_version_evaluate


@shared_task(name="control.action_execute", acks_late=True, queue="control")
def action_execute_task(execution_id: int) -> str:
    """Carry out one policy action (idempotent: a second delivery does nothing)."""
    return str(triggers.action_execute(execution_id=execution_id).status)


@shared_task(name="control.engine_on_transition", queue="control")
def engine_on_transition_task(experiment_id: int, event: str) -> int:
    """Evaluate transition-driven policies for one experiment; return how many fired."""
    return len(engine_on_transition(experiment_id=experiment_id, event=event))


@shared_task(name="control.engine_on_metrics", queue="control")
def engine_on_metrics_task(experiment_id: int) -> int:
    """Evaluate metric-driven policies for one running experiment; return how many fired."""
    return len(engine_on_metrics(experiment_id=experiment_id))


@shared_task(name="control.triggers_expire", queue="control")
def triggers_expire_task() -> int:
    """Expire approvals past their timeout; return how many."""
    return triggers.triggers_expire()


@shared_task(name="control.drift_sweep", queue="control")
def drift_sweep_task() -> list[dict[str, object]]:
    """Measure drift of every production model; drift policies may retrain."""
    return drift_sweep()


@shared_task(name="control.evaluate_version", queue="control")
def evaluate_version_task(version_id: int) -> str:
    """Evaluate one model version on its recipe's held-out set (the evaluation job); return its status."""
    evaluation = model_version_evaluate(version_id=version_id)
    return evaluation.status if evaluation is not None else "no held-out evaluation"
