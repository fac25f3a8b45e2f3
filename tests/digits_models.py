"""Really trained digits checkpoints, the evaluating experiments that own them, and their canaries."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import experiments.registry.serving as serving
from control.policies.authoring import policy_create
from control.policies.models import Policy
from experiments.actors import Actor
from experiments.choices import RunStatus
from experiments.models import Experiment, ModelVersion, Run
from experiments.runs.execution import file_sha256
from experiments.services import experiment_create, experiment_transition

SYSTEM = Actor.system("test")
FEATURES = {"features": [0.0] * 64}  # one blank 8x8 image: a request every digits model answers


def train_digits(folder: Path, **config: Any) -> tuple[Path, dict[str, float]]:
    """Train a digits MLP with the real recipe into folder; return its newest checkpoint and metrics."""
    from experiments.recipes.digits import RECIPE
    from experiments.recipes.local import LocalRunContext

    result = RECIPE.train(LocalRunContext(checkpoint_dir=folder, keep=1), config)
    return sorted(folder.glob("step-*.pt"))[-1], dict(result.final_metrics)


def evaluating_digits_experiment(
    name: str,
    checkpoint: Path,
    *,
    metrics: dict[str, float] | None = None,
    sha256: str | None = None,
    config: dict[str, Any] | None = None,
) -> Experiment:
    """Return a digits experiment in evaluating whose succeeded run left this checkpoint."""
    experiment = experiment_create(name=name, recipe="digits", config=config or {})
    for event in ("queue", "start", "complete"):
        experiment = experiment_transition(experiment_id=experiment.pk, event=event, actor=SYSTEM)
    Run.objects.create(
        experiment=experiment,
        attempt=1,
        status=RunStatus.SUCCEEDED,
        checkpoint_path=str(checkpoint),
        checkpoint_sha256=sha256 or file_sha256(checkpoint),
        checkpoint_size=checkpoint.stat().st_size,
        final_metrics=metrics or {},
    )
    return experiment


def promote_to_production(experiment: Experiment) -> None:
    """Fire promote then deploy on an evaluating experiment, as the system."""
    for event in ("promote", "deploy"):
        experiment_transition(experiment_id=experiment.pk, event=event, actor=SYSTEM)


def canary_policy_create(*stages: tuple[str, float, int], min_requests: int = 50) -> Policy:
    """Create the canary policy "digits-canary": these stages (default c10, full), rollback on >5% errors.

    Its margin is wide (a version is surely bad only at 85% errors), so that three clean answers
    let the sequential test pass a stage: these tests follow stages and pages, not the test's power.
    """
    return policy_create(
        name="digits-canary",
        kind="canary",
        stages=list(stages) or [("c10", 10, 60), ("full", 100, 0)],
        conditions=[
            {
                "kind": "metric",
                "metric": "error_rate",
                "operator": ">",
                "threshold": 0.05,
                "role": "rollback_on",
            }
        ],
        canary_min_requests=min_requests,
        canary_margin=0.8,
    )


def serve_until(candidate: ModelVersion, needed: int) -> Counter[int]:
    """Serve real predictions until the candidate answered `needed` of them; return counts by version."""
    served: Counter[int] = Counter()
    for _ in range(5000):
        served[serving.predict(model_name="digits", payload=FEATURES)["version"]] += 1
        if served[candidate.version] >= needed:
            return served
    pytest.fail(f"the canary answered {served[candidate.version]} of {sum(served.values())} requests")
