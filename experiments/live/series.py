"""Metric history for charts: one series per metric name, the latest attempt winning, downsampled.

Where several attempts logged metrics, the stitching rule of selectors_runs decides which
points count; the common case (one attempt) reads straight along the series index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db import connections
from django.db.models import QuerySet

from experiments.live.downsample import MIN_POINTS, downsample_series
from experiments.models import MetricPoint, Run
from experiments.runs.selectors import experiment_metric_series

# Points per series a chart receives unless it asks for another budget.
DEFAULT_MAX_POINTS = 2000


def default_max_points() -> int:
    """Return the configured point budget per series (settings.METRICS_MAX_POINTS)."""
    # A budget too small to hold first, last, min and max would refuse every request.
    return max(MIN_POINTS, int(getattr(settings, "METRICS_MAX_POINTS", DEFAULT_MAX_POINTS)))


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
    low = max(since_step + 1 if since_step is not None else 0, start_step or 0)
    high = end_step
    if Run.objects.filter(experiment_id=experiment_id).count() > 1:
        raw = _read_stitched(experiment_id=experiment_id, names=names, low=low, high=high)
    else:
        raw = _read_single(experiment_id=experiment_id, names=names, low=low, high=high)

    series: dict[str, Series] = {}
    last_step: int | None = None
    for name, (steps, values) in raw.items():
        if steps:
            last_step = steps[-1] if last_step is None else max(last_step, steps[-1])
        kept_steps, kept_values, downsampled = downsample_series(steps, values, max_points=budget)
        series[name] = Series(
            steps=kept_steps, values=kept_values, downsampled=downsampled, total_points=len(steps)
        )
    return SeriesSet(experiment_id=experiment_id, series=series, last_step=last_step)


Raw = dict[str, tuple[list[int], list[float | None]]]


def _read_single(*, experiment_id: int, names: Sequence[str] | None, low: int, high: int | None) -> Raw:
    """Read the series of an experiment with at most one attempt, along the (experiment, name, step) index."""
    if names is None:
        names = metric_names(experiment_id=experiment_id)
    base = MetricPoint.objects.filter(experiment_id=experiment_id)
    if low > 0:
        base = base.filter(step__gte=low)
    if high is not None:
        base = base.filter(step__lte=high)
    raw: Raw = {}
    for name in dict.fromkeys(names):  # unique, in the asked order
        # One series per query: an index range scan along (experiment, name, step).
        raw[name] = _fetch_pairs(base.filter(name=name).order_by("step").values_list("step", "value"))
    return raw


def _fetch_pairs(qs: QuerySet[MetricPoint, tuple[int, float | None]]) -> tuple[list[int], list[float | None]]:
    """Run a (step, value) query and return its columns as two lists.

    At 100k rows the ORM's per-row iteration costs more than the query itself, so the
    compiled SQL runs on a cursor and the columns are split with comprehensions
    (zip(*rows) is far slower for this many rows).
    """
    sql, params = qs.query.sql_with_params()
    with connections[qs.db].cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return [row[0] for row in rows], [row[1] for row in rows]


def _read_stitched(*, experiment_id: int, names: Sequence[str] | None, low: int, high: int | None) -> Raw:
    """Read series of an experiment with several attempts: the later attempt wins where they overlap."""
    stitched = experiment_metric_series(experiment_id=experiment_id, names=list(names) if names else None)
    order = list(dict.fromkeys(names)) if names is not None else sorted(stitched)
    raw: Raw = {}
    for name in order:
        points = [p for p in stitched.get(name, []) if p.step >= low and (high is None or p.step <= high)]
        raw[name] = ([p.step for p in points], [p.value for p in points])
    return raw
