"""Really trained digits checkpoints and the evaluating experiments that own them (registry tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from experiments.actors import Actor
from experiments.choices import RunStatus
from experiments.models import Experiment, Run
from experiments.runs.execution import file_sha256
from experiments.services import experiment_create, experiment_transition

SYSTEM = Actor.system("test")


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
