"""Helpers for policy tests: experiments with a finished run and metric history, policies as records."""

from __future__ import annotations

import time
from typing import Any

from control.policies.authoring import policy_create
from control.policies.models import (
    ActionExecution,
    ExecutionStatus,
    Policy,
)
from control.policies.triggers import action_execute
from experiments.actors import Actor
from experiments.choices import RunStatus
from experiments.models import Experiment, MetricPoint, Run
from experiments.services import experiment_create, experiment_transition

SYSTEM = Actor.system("test")


def experiment_through(*events: str, name: str = "exp", recipe: str = "digits", **kwargs: Any) -> Experiment:
    """Return an experiment driven through these events by the system."""
    experiment = experiment_create(name=name, recipe=recipe, **kwargs)
    for event in events:
        experiment_transition(experiment_id=experiment.pk, event=event, actor=SYSTEM)
    return Experiment.objects.get(pk=experiment.pk)


def record_run(
    experiment: Experiment,
    series: dict[str, list[float | None]],
    *,
    attempt: int = 1,
    status: str = RunStatus.SUCCEEDED,
) -> Run:
    """Store a run with these metric values at steps 1..n and its final metrics (the last values)."""
    final = {name: values[-1] for name, values in series.items() if values}
    run = Run.objects.create(experiment=experiment, attempt=attempt, status=status, final_metrics=final)
    now = time.time()
    MetricPoint.objects.bulk_create(
        MetricPoint(run=run, experiment=experiment, name=name, step=i + 1, value=value, wall_time=now)
        for name, values in series.items()
        for i, value in enumerate(values)
    )
    return run


def add_points(run: Run, name: str, values: list[float | None], *, first_step: int) -> None:
    """Append metric points to a run."""
    MetricPoint.objects.bulk_create(
        MetricPoint(
            run=run, experiment=run.experiment, name=name, step=first_step + i, value=v, wall_time=time.time()
        )
        for i, v in enumerate(values)
    )


def make_policy(
    name: str, kind: str, conditions: list[dict[str, Any]], actions: list[dict[str, Any]], **fields: Any
) -> Policy:
    """Create a policy with validated condition and action rows."""
    return policy_create(name=name, kind=kind, conditions=conditions, actions=actions, **fields)


def run_pending_actions() -> list[ActionExecution]:
    """Carry out queued actions here, as the control-queue worker would."""
    done = []
    for execution in ActionExecution.objects.filter(status=ExecutionStatus.PENDING).order_by("id"):
        done.append(action_execute(execution_id=execution.pk))
    return done
