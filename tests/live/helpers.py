"""Builders of metric history for the live-view tests."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import connection

from experiments.models import Experiment, MetricPoint, Run
from experiments.runs.rollups import rollups_rebuild


def run_for(experiment: Experiment, *, attempt: int = 1, resumed_from_step: int | None = None) -> Run:
    """Return a new attempt of the experiment."""
    return Run.objects.create(experiment=experiment, attempt=attempt, resumed_from_step=resumed_from_step)


def log_points(run: Run, name: str, points: Iterable[tuple[int, float | None]]) -> None:
    """Store (step, value) points of one metric for a run, as the reporter does."""
    MetricPoint.objects.bulk_create(
        [
            MetricPoint(
                run=run,
                experiment_id=run.experiment_id,
                name=name,
                step=step,
                value=value,
                wall_time=float(step),
            )
            for step, value in points
        ],
        batch_size=2000,
    )
    # Stored around metrics_write: its roll-ups are built the way a retried batch rebuilds them.
    with connection.cursor() as cursor:
        rollups_rebuild(cursor, run_id=run.pk, name=name)
