"""Roll-ups and the charts read from them: exact under any write order, and no spike ever lost."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest
from django.db import connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from experiments.live.series import decompose, metric_series, points_at_most, run_series
from experiments.models import ROLLUP_WIDTHS, Experiment, MetricPoint, MetricRollup, Run
from experiments.runs.reporting import metrics_write
from experiments.runs.rollups import COLUMNS, rollups_rebuild
from experiments.services import experiment_create

pytestmark = pytest.mark.django_db

# Steps span the boundary of the coarsest bucket (65,536), so ranges cut through every level.
STEP_SPAN = 70_000
values = st.one_of(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), st.none())


def _new_run() -> Run:
    experiment = experiment_create(name="rollups", recipe="digits")
    return Run.objects.create(experiment=experiment, attempt=1)


def _write(run: Run, batch: Sequence[tuple[int, float | None]], name: str = "loss") -> None:
    points: Any = [{"name": name, "step": s, "value": v, "wall_time": 0.0} for s, v in batch]
    metrics_write(experiment_id=run.experiment_id, run_id=run.pk, points=points)


def _stored_rollups(run: Run) -> dict[tuple[str, int, int], tuple[Any, ...]]:
    rows = MetricRollup.objects.filter(run=run).values_list("name", "level", "bucket", *COLUMNS)
    return {(r[0], r[1], r[2]): tuple(r[3:]) for r in rows}


def _rebuilt_rollups(run: Run) -> dict[tuple[str, int, int], tuple[Any, ...]]:
    """Return the roll-ups computed afresh from the stored points (what they must equal)."""
    before = _stored_rollups(run)
    with connection.cursor() as cursor:
        for name in {key[0] for key in before} | set(
            MetricPoint.objects.filter(run=run).values_list("name", flat=True)
        ):
            rollups_rebuild(cursor, run_id=run.pk, name=name)
    return _stored_rollups(run)


def _stored(run: Run, low: int, high: int) -> list[tuple[int, float | None]]:
    return list(
        MetricPoint.objects.filter(run=run, name="loss", step__gte=low, step__lte=high)
        .order_by("step")
        .values_list("step", "value")
    )


def _check_chart(run: Run, *, low: int, high: int | None, budget: int) -> None:
    """The chart of steps low..high keeps each of its buckets' min and max, within the budget."""
    series = run_series(run_id=run.pk, name="loss", low=low, high=high, max_points=budget)
    stored = _stored(run, low, 2**31 - 1 if high is None else high)
    assert series.total_points == len(stored)
    by_step = dict(stored)
    chart = dict(zip(series.steps, series.values, strict=True))
    assert series.steps == sorted(chart), "steps ascend, each once"
    # Every point drawn is a stored point, with its stored value.
    assert all(step in by_step and by_step[step] == value for step, value in chart.items())
    if len(stored) <= budget:
        assert not series.downsampled and chart == by_step
        return
    assert series.downsampled and len(chart) <= budget
    finite = [(s, v) for s, v in stored if v is not None]
    if finite:
        # The spikes of the whole range, whatever the level read.
        assert min(v for _, v in finite) in chart.values()
        assert max(v for _, v in finite) in chart.values()
    first, last = stored[0][0], stored[-1][0]
    pieces = next(
        (
            p
            for level in sorted(ROLLUP_WIDTHS)
            if points_at_most(p := decompose(first, last, level)) <= budget
        ),
        None,
    )
    if pieces is None:
        return  # even the coarsest level is too fine for this budget: thinned further (spikes kept above)
    assert first in chart and last in chart
    for level, start, end in pieces:
        width = ROLLUP_WIDTHS.get(level, 1)
        for bucket in range(start, end + 1):
            inside = [(s, v) for s, v in stored if bucket * width <= s < (bucket + 1) * width]
            bucket_finite = [(s, v) for s, v in inside if v is not None]
            if bucket_finite:
                assert min(v for _, v in bucket_finite) in [chart[s] for s, _ in inside if s in chart]
                assert max(v for _, v in bucket_finite) in [chart[s] for s, _ in inside if s in chart]
            if any(v is None for _, v in inside):
                assert any(chart.get(s, 0.0) is None for s, v in inside if v is None), "a gap stays a gap"


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
@given(
    points=st.dictionaries(st.integers(min_value=0, max_value=STEP_SPAN), values, min_size=30, max_size=400),
    batch_size=st.integers(min_value=1, max_value=40),
    seed=st.integers(min_value=0, max_value=2**16),
    budget=st.integers(min_value=4, max_value=120),
    window=st.tuples(st.integers(0, STEP_SPAN), st.integers(0, STEP_SPAN)),
)
def test_out_of_order_and_retried_batches_keep_every_buckets_min_and_max(
    points: dict[int, float | None], batch_size: int, seed: int, budget: int, window: tuple[int, int]
) -> None:
    run = _new_run()
    rng = random.Random(seed)
    items = list(points.items())
    rng.shuffle(items)  # out of order
    batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    for batch in batches:
        _write(run, batch)
        if rng.random() < 0.3:
            _write(run, batch)  # a retried batch: harmless
    if rng.random() < 0.5:
        _write(run, rng.sample(items, k=min(len(items), 5)))  # part of an old batch, once more
    assert _stored_rollups(run) == _rebuilt_rollups(run)
    low, high = sorted(window)
    _check_chart(run, low=0, high=None, budget=budget)
    _check_chart(run, low=low, high=high, budget=budget)


def test_a_spike_among_a_hundred_thousand_points_reaches_the_default_chart() -> None:
    run = _new_run()
    rng = random.Random(18)
    series = [(s, 1.0 / (1 + s) + rng.random() * 1e-3) for s in range(100_000)]
    series[77_777] = (77_777, 50.0)
    series[3] = (3, -50.0)
    for start in range(0, len(series), 1000):
        _write(run, series[start : start + 1000])
    result = metric_series(experiment_id=run.experiment_id, names=["loss"]).series["loss"]
    assert result.downsampled and result.total_points == 100_000
    assert len(result.steps) <= 2000
    assert 50.0 in result.values and -50.0 in result.values
    assert result.steps[0] == 0 and result.steps[-1] == 99_999
    _check_chart(run, low=0, high=None, budget=2000)
    _check_chart(run, low=65_000, high=66_000, budget=100)  # a zoom across the coarsest boundary


def test_a_retried_point_with_another_value_keeps_the_stored_one_in_the_rollup() -> None:
    run = _new_run()
    _write(run, [(s, 1.0) for s in range(40)])
    _write(run, [(5, 1e9), (40, 2.0)])  # step 5 is already stored: the insert ignores it
    [bucket] = MetricRollup.objects.filter(run=run, level=1, bucket=0)
    assert bucket.count == 16 and bucket.max_value == 1.0
    assert MetricRollup.objects.get(run=run, level=4, bucket=0).count == 41


def test_rollups_go_with_their_run(experiment: Experiment) -> None:
    run = Run.objects.create(experiment=experiment, attempt=1)
    _write(run, [(s, float(s)) for s in range(100)])
    assert MetricRollup.objects.filter(run=run).count() == 7 + 1 + 1 + 1
    run.delete()
    assert not MetricRollup.objects.exists()
