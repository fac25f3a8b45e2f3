"""Reads about runs: an experiment's metric series stitched across attempts, the current run."""

from __future__ import annotations

from dataclasses import dataclass

from experiments.models import MetricPoint, Run


@dataclass(frozen=True)
class SeriesPoint:
    """One point of a stitched series, with the attempt that produced it."""

    step: int
    value: float | None
    wall_time: float
    run_id: int
    attempt: int


def _cutoffs(runs: list[Run]) -> dict[int, int | None]:
    """Return, per run id, the last step of that run still valid (None: no limit; -1: none valid).

    A later attempt that resumed from step R supersedes earlier attempts' points after R
    (it trains those steps again); one that started fresh supersedes all of them.
    """
    cutoffs: dict[int, int | None] = {}
    limit: int | None = None
    for run in sorted(runs, key=lambda r: r.attempt, reverse=True):
        cutoffs[run.pk] = limit
        resumed = -1 if run.resumed_from_step is None else int(run.resumed_from_step)
        if run.started_at is not None or run.points.exists():
            limit = resumed if limit is None else min(limit, resumed)
    return cutoffs


def experiment_metric_series(
    *, experiment_id: int, names: list[str] | None = None
) -> dict[str, list[SeriesPoint]]:
    """Return each metric's points across all attempts, each step once, in step order.

    Where two attempts logged the same step (the later resumed at that step), the later wins.
    """
    runs = list(Run.objects.filter(experiment_id=experiment_id))
    cutoffs = _cutoffs(runs)
    attempts = {r.pk: r.attempt for r in runs}
    qs = MetricPoint.objects.filter(experiment_id=experiment_id)
    if names:
        qs = qs.filter(name__in=names)
    chosen: dict[tuple[str, int], SeriesPoint] = {}
    for name, step, value, wall_time, run_id in qs.values_list(
        "name", "step", "value", "wall_time", "run_id"
    ):
        limit = cutoffs.get(run_id)
        if limit is not None and step > limit:
            continue
        key = (name, step)
        current = chosen.get(key)
        if current is None or attempts[run_id] > current.attempt:
            chosen[key] = SeriesPoint(step, value, wall_time, run_id, attempts[run_id])
    series: dict[str, list[SeriesPoint]] = {}
    for (name, _step), point in chosen.items():
        series.setdefault(name, []).append(point)
    for points in series.values():
        points.sort(key=lambda p: p.step)
    return series
