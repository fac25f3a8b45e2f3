"""Metric history for charts: one series per metric name, the latest attempt winning, downsampled."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Q, QuerySet

from .downsample import downsample_series
from .models import MetricPoint, Run

# Points per series a chart receives unless it asks for another budget.
DEFAULT_MAX_POINTS = 2000


def default_max_points() -> int:
    """Return the configured point budget per series (settings.METRICS_MAX_POINTS)."""
    return int(getattr(settings, "METRICS_MAX_POINTS", DEFAULT_MAX_POINTS))


@dataclass(frozen=True)
class Series:
    """One metric's points, ready for a chart: parallel steps and values (None is a gap)."""

    steps: list[int]
    values: list[float | None]
    downsampled: bool
    total_points: int


@dataclass(frozen=True)
class SeriesSet:
    """The series of one experiment, and the last step any of them reached."""

    experiment_id: int
    series: dict[str, Series]
    last_step: int | None


def metric_names(*, experiment_id: int) -> list[str]:
    """Return the names of the metrics an experiment has logged, sorted."""
    return list(
        MetricPoint.objects.filter(experiment_id=experiment_id)
        .order_by("name")
        .values_list("name", flat=True)
        .distinct()
    )


def visible_points_filter(*, experiment_id: int) -> Q | None:
    """Return the filter that hides points a later attempt superseded (None: nothing to hide).

    An attempt that resumed from checkpoint step S replaces everything earlier attempts
    logged after S; an attempt with no checkpoint (resumed_from_step NULL) started over
    and replaces all of it. The chart thus shows the training that the latest attempt
    continues, without the abandoned tails of earlier ones.
    """
    runs = list(
        Run.objects.filter(experiment_id=experiment_id)
        .order_by("attempt")
        .values_list("id", "resumed_from_step")
    )
    if len(runs) <= 1:
        return None
    visible = Q(run_id=runs[-1][0])
    cutoff: int | None = None
    # Walk from the latest attempt back: each one's cutoff is the lowest resume step after it.
    for index in range(len(runs) - 1, 0, -1):
        resumed = runs[index][1]
        step_limit = -1 if resumed is None else resumed
        cutoff = step_limit if cutoff is None else min(cutoff, step_limit)
        if cutoff >= 0:
            visible |= Q(run_id=runs[index - 1][0], step__lte=cutoff)
    return visible


def metric_series(
    *,
    experiment_id: int,
    names: Sequence[str] | None = None,
    since_step: int | None = None,
    start_step: int | None = None,
    end_step: int | None = None,
    max_points: int | None = None,
) -> SeriesSet:
    """Return the named series (all metrics when names is None) within the step window.

    since_step keeps steps after it (the gap a reconnecting page missed); start_step and
    end_step (inclusive) bound a zoomed range. Each series is downsampled to max_points
    with a min/max-preserving method.
    """
    budget = default_max_points() if max_points is None else max_points
    if names is None:
        names = metric_names(experiment_id=experiment_id)
    base = MetricPoint.objects.filter(experiment_id=experiment_id)
    if since_step is not None:
        base = base.filter(step__gt=since_step)
    if start_step is not None:
        base = base.filter(step__gte=start_step)
    if end_step is not None:
        base = base.filter(step__lte=end_step)
    visible = visible_points_filter(experiment_id=experiment_id)

    series: dict[str, Series] = {}
    last_step: int | None = None
    for name in dict.fromkeys(names):  # unique, in the asked order
        steps, values = _read_series(base.filter(name=name), visible=visible)
        if steps:
            last_step = steps[-1] if last_step is None else max(last_step, steps[-1])
        total = len(steps)
        kept_steps, kept_values, downsampled = downsample_series(steps, values, max_points=budget)
        series[name] = Series(
            steps=kept_steps, values=kept_values, downsampled=downsampled, total_points=total
        )
    return SeriesSet(experiment_id=experiment_id, series=series, last_step=last_step)


def _read_series(qs: QuerySet[MetricPoint], *, visible: Q | None) -> tuple[list[int], list[float | None]]:
    """Read (steps, values) of one series in step order along the (experiment, name, step) index."""
    if visible is None:
        # One attempt: a plain index range scan, transposed at C speed.
        rows = list(qs.order_by("step").values_list("step", "value"))
        if not rows:
            return [], []
        steps, values = zip(*rows, strict=True)
        return list(steps), list(values)
    # Several attempts: where two logged the same step, the later attempt comes first and wins.
    rows3 = qs.filter(visible).order_by("step", "-run__attempt").values_list("step", "value")
    out_steps: list[int] = []
    out_values: list[float | None] = []
    previous: int | None = None
    for step, value in rows3:
        if step != previous:
            out_steps.append(step)
            out_values.append(value)
            previous = step
    return out_steps, out_values
