"""When each step of an experiment was logged: what a chart needs to label its step axis in time."""

from __future__ import annotations

from dataclasses import dataclass

from experiments.live.series import metric_names
from experiments.models import MetricPoint

# Enough for a smooth step-to-time curve; a chart interpolates between them.
DEFAULT_STEP_TIMES = 500


@dataclass(frozen=True)
class StepTimes:
    """Steps in order and the Unix time each was logged (the latest attempt's, after a resume)."""

    name: str
    steps: list[int]
    wall_times: list[float]


def step_times(
    *, experiment_id: int, name: str | None = None, max_points: int = DEFAULT_STEP_TIMES
) -> StepTimes:
    """Return when the steps of one metric (the first by name when none is given) were logged, thinned evenly."""
    if name is None:
        names = metric_names(experiment_id=experiment_id)
        if not names:
            return StepTimes(name="", steps=[], wall_times=[])
        name = names[0]
    latest: dict[int, float] = {}
    # Ordered by time: a step trained again after a resume keeps its later time.
    rows = (
        MetricPoint.objects.filter(experiment_id=experiment_id, name=name)
        .order_by("wall_time")
        .values_list("step", "wall_time")
    )
    for step, wall_time in rows.iterator(chunk_size=10_000):
        latest[step] = wall_time
    steps = sorted(latest)
    if len(steps) > max_points:
        stride = len(steps) / max_points
        picked = [steps[int(i * stride)] for i in range(max_points)]
        if picked[-1] != steps[-1]:
            picked.append(steps[-1])
        steps = picked
    return StepTimes(name=name, steps=steps, wall_times=[latest[s] for s in steps])
