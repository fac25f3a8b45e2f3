"""Metric history for charts: one series per metric name, the latest attempt winning, downsampled.

Where several attempts logged metrics, the stitching rule of experiments.runs.selectors
decides which points count. The common case (one attempt) never reads more rows than the
chart can draw: a short range reads its points, a long one the roll-ups that fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db import connections

from experiments.live.downsample import MIN_POINTS, POINTS_PER_BUCKET, bucket_points, downsample_series
from experiments.models import ROLLUP_WIDTHS, MetricPoint, MetricRollup, Run
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
    # Set instead of steps and values when the database wrote them as JSON arrays already
    # (a full-resolution read for the history API on PostgreSQL): (steps, values, last step).
    encoded: tuple[str, str, int | None] | None = None

    @property
    def last_step(self) -> int | None:
        """Return the last step of the series, None when it is empty."""
        if self.encoded is not None:
            return self.encoded[2]
        return self.steps[-1] if self.steps else None


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
    encoded: bool = False,
) -> SeriesSet:
    """Return the named series (all metrics when names is None) within the step window.

    encoded: the caller writes JSON and takes a full-resolution series as JSON text where
    the database can write it (Series.encoded).

    since_step keeps steps after it (the gap a reconnecting page missed); start_step and
    end_step (inclusive) bound a zoomed range. Each series is downsampled to max_points
    with a min/max-preserving method: an experiment with one attempt reads the roll-up
    level that fits the budget (never every point), several attempts are stitched first.
    """
    budget = default_max_points() if max_points is None else max_points
    low = max(since_step + 1 if since_step is not None else 0, start_step or 0)
    high = end_step
    run_ids = list(Run.objects.filter(experiment_id=experiment_id).values_list("pk", flat=True)[:2])
    series: dict[str, Series] = {}
    if len(run_ids) == 1:
        for name in dict.fromkeys(names) if names is not None else _run_metric_names(run_ids[0]):
            series[name] = run_series(
                run_id=run_ids[0], name=name, low=low, high=high, max_points=budget, encoded=encoded
            )
        return SeriesSet(experiment_id=experiment_id, series=series, last_step=_last_step(series))
    if run_ids:
        raw = _read_stitched(experiment_id=experiment_id, names=names, low=low, high=high)
    else:
        raw = {name: ([], []) for name in dict.fromkeys(names or ())}
    for name, (steps, values) in raw.items():
        kept_steps, kept_values, downsampled = downsample_series(steps, values, max_points=budget)
        series[name] = Series(
            steps=kept_steps, values=kept_values, downsampled=downsampled, total_points=len(steps)
        )
    return SeriesSet(experiment_id=experiment_id, series=series, last_step=_last_step(series))


def _last_step(series: dict[str, Series]) -> int | None:
    ends = [end for s in series.values() if (end := s.last_step) is not None]
    return max(ends) if ends else None


def _run_metric_names(run_id: int) -> list[str]:
    """Return the metrics a run logged, sorted, from its coarsest roll-up (a few rows per metric)."""
    top = max(ROLLUP_WIDTHS)
    return list(
        MetricRollup.objects.filter(run_id=run_id, level=top)
        .order_by("name")
        .values_list("name", flat=True)
        .distinct()
    )


# A piece of a step range: (level, first, last) — level 0: steps first..last of the points
# themselves; level L > 0: buckets first..last of that roll-up level.
Piece = tuple[int, int, int]


def decompose(low: int, high: int, level: int) -> list[Piece]:
    """Split steps low..high (inclusive) into whole buckets of `level`, edges in finer levels, in step order."""
    if low > high:
        return []
    if level == 0:
        return [(0, low, high)]
    width = ROLLUP_WIDTHS[level]
    first = -(-low // width)
    last = (high + 1) // width - 1
    if first > last:
        return decompose(low, high, level - 1)
    return [
        *decompose(low, first * width - 1, level - 1),
        (level, first, last),
        *decompose((last + 1) * width, high, level - 1),
    ]


def points_at_most(pieces: list[Piece]) -> int:
    """Return how many chart points the pieces can yield at most."""
    return sum((end - start + 1) * (POINTS_PER_BUCKET if level else 1) for level, start, end in pieces)


def run_series(
    *, run_id: int, name: str, low: int, high: int | None, max_points: int, encoded: bool = False
) -> Series:
    """Return one metric of one run within steps low..high, within max_points, reading as few rows as it can.

    At most max_points points in the range: all of them, read as two columns. More: the
    finest roll-up level whose buckets fit the budget, each bucket giving its first, min,
    max and last point (and its first gap), the range's partial buckets at their edges
    taken from finer levels, so no bucket is cut and every spike stays.
    """
    connection = connections[MetricRollup.objects.db]
    rollups = connection.ops.quote_name(MetricRollup._meta.db_table)
    points = connection.ops.quote_name(MetricPoint._meta.db_table)
    top = max(ROLLUP_WIDTHS)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT MIN(first_step), MAX(last_step) FROM {rollups} WHERE run_id = %s AND name = %s AND level = %s",
            [run_id, name, top],
        )
        first, last = cursor.fetchone()
        if first is None:
            return Series(steps=[], values=[], downsampled=False, total_points=0)
        low = max(low, first)
        high = last if high is None else min(high, last)
        if low > high:
            return Series(steps=[], values=[], downsampled=False, total_points=0)

        def count(pieces: list[Piece]) -> int:
            total = 0
            for level, start, end in pieces:
                if level:
                    cursor.execute(
                        f"SELECT SUM(count) FROM {rollups} WHERE run_id = %s AND name = %s AND level = %s "
                        "AND bucket BETWEEN %s AND %s",
                        [run_id, name, level, start, end],
                    )
                else:
                    cursor.execute(
                        f"SELECT COUNT(*) FROM {points} WHERE run_id = %s AND name = %s AND step BETWEEN %s AND %s",
                        [run_id, name, start, end],
                    )
                total += int(cursor.fetchone()[0] or 0)
            return total

        total = count(decompose(low, high, top))
        if total <= max_points and encoded and connection.vendor == "postgresql":
            # PostgreSQL writes the two arrays itself (floats in their shortest exact form):
            # no row, tuple or float object is built for a 100k-point answer.
            cursor.execute(
                f"SELECT COALESCE(json_agg(step ORDER BY step)::text, '[]'), "
                f"COALESCE(json_agg(value ORDER BY step)::text, '[]'), MAX(step) FROM {points} "
                "WHERE run_id = %s AND name = %s AND step BETWEEN %s AND %s",
                [run_id, name, low, high],
            )
            steps_json, values_json, end = cursor.fetchone()
            return Series(
                steps=[],
                values=[],
                downsampled=False,
                total_points=total,
                encoded=(steps_json, values_json, end),
            )
        if total <= max_points:
            cursor.execute(
                f"SELECT step, value FROM {points} WHERE run_id = %s AND name = %s AND step BETWEEN %s AND %s "
                "ORDER BY step",
                [run_id, name, low, high],
            )
            rows = cursor.fetchall()
            return Series(
                steps=[r[0] for r in rows], values=[r[1] for r in rows], downsampled=False, total_points=total
            )

        pieces = decompose(low, high, top)
        for level in sorted(ROLLUP_WIDTHS):
            candidate = decompose(low, high, level)
            if points_at_most(candidate) <= max_points:
                pieces = candidate
                break
        kept: list[tuple[int, float | None]] = []
        for level, start, end in pieces:
            if level:
                cursor.execute(
                    "SELECT first_step, first_value, last_step, last_value, min_step, min_value, "
                    f"max_step, max_value, gap_step FROM {rollups} WHERE run_id = %s AND name = %s "
                    "AND level = %s AND bucket BETWEEN %s AND %s ORDER BY bucket",
                    [run_id, name, level, start, end],
                )
                for bucket in cursor.fetchall():
                    kept.extend(bucket_points(bucket))
            else:
                cursor.execute(
                    f"SELECT step, value FROM {points} WHERE run_id = %s AND name = %s "
                    "AND step BETWEEN %s AND %s ORDER BY step",
                    [run_id, name, start, end],
                )
                kept.extend(cursor.fetchall())
    steps = [p[0] for p in kept]
    values = [p[1] for p in kept]
    if len(kept) > max_points:
        # Even the coarsest level holds too many buckets for this budget: thin them further
        # with the same min/max-preserving method.
        steps, values, _ = downsample_series(steps, values, max_points=max_points)
    return Series(steps=steps, values=values, downsampled=True, total_points=total)


Raw = dict[str, tuple[list[int], list[float | None]]]


def _read_stitched(*, experiment_id: int, names: Sequence[str] | None, low: int, high: int | None) -> Raw:
    """Read series of an experiment with several attempts: the later attempt wins where they overlap."""
    stitched = experiment_metric_series(experiment_id=experiment_id, names=list(names) if names else None)
    order = list(dict.fromkeys(names)) if names is not None else sorted(stitched)
    raw: Raw = {}
    for name in order:
        points = [p for p in stitched.get(name, []) if p.step >= low and (high is None or p.step <= high)]
        raw[name] = ([p.step for p in points], [p.value for p in points])
    return raw
