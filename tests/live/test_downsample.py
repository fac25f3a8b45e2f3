"""Min/max downsampling: the budget holds, and no bucket's extreme (no spike) is ever lost."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.live.downsample import MIN_POINTS, downsample_indices, downsample_series

finite_floats = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
maybe_missing = st.one_of(finite_floats, finite_floats, finite_floats, st.none())


def test_every_buckets_min_and_max_survive() -> None:
    rng = np.random.default_rng(7)
    y = rng.normal(size=1000)
    # 102 points: first, last, and 50 (min, max) pairs over buckets of 20 points.
    kept = set(downsample_indices(y, max_points=102).tolist())
    for start in range(0, 1000, 20):
        bucket = y[start : start + 20]
        assert start + int(np.argmin(bucket)) in kept
        assert start + int(np.argmax(bucket)) in kept


def test_a_single_spike_survives_heavy_downsampling() -> None:
    y = np.ones(100_000)
    y[61_234] = 1e9
    y[17] = -5.0
    kept = downsample_indices(y, max_points=10)
    assert len(kept) <= 10
    assert 61_234 in kept
    assert 17 in kept


def test_a_short_series_is_left_alone() -> None:
    steps, values, downsampled = downsample_series([1, 2, 3], [0.5, None, 0.25], max_points=4)
    assert (steps, values, downsampled) == ([1, 2, 3], [0.5, None, 0.25], False)


def test_missing_values_stay_visible_as_gaps() -> None:
    values: list[float | None] = [float(i % 7) for i in range(1000)]
    values[500:510] = [None] * 10
    steps, kept, downsampled = downsample_series(list(range(1000)), values, max_points=40)
    assert downsampled
    assert len(steps) <= 40
    assert 500 in steps
    assert kept[steps.index(500)] is None


def test_a_series_of_only_missing_values_does_not_crash() -> None:
    steps, values, downsampled = downsample_series(list(range(100)), [None] * 100, max_points=8)
    assert downsampled
    assert steps == [0]
    assert values == [None]


def test_infinities_count_as_gaps() -> None:
    y = np.arange(100, dtype=np.float64)
    y[50] = math.inf
    kept = downsample_indices(y, max_points=10)
    assert 50 in kept
    assert 99 in kept  # the largest finite value, not the infinity, is the maximum


def test_a_budget_below_the_minimum_is_refused() -> None:
    with pytest.raises(ValueError, match="max_points"):
        downsample_indices(np.ones(10), max_points=MIN_POINTS - 1)


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(maybe_missing, min_size=1, max_size=600),
    max_points=st.integers(min_value=MIN_POINTS, max_value=300),
)
def test_the_budget_holds_and_the_global_extremes_survive(
    values: list[float | None], max_points: int
) -> None:
    steps = list(range(0, 3 * len(values), 3))
    out_steps, out_values, downsampled = downsample_series(steps, values, max_points=max_points)
    assert len(out_steps) <= max_points
    assert len(out_steps) == len(out_values)
    assert out_steps == sorted(set(out_steps))
    # Every kept point is a real point, with its own value.
    original = dict(zip(steps, values, strict=True))
    assert all(original[s] == v for s, v in zip(out_steps, out_values, strict=True))
    finite = [v for v in values if v is not None]
    if finite:
        assert max(finite) in out_values
        assert min(finite) in out_values
    if any(v is None for v in values):
        assert None in out_values
    assert downsampled == (len(values) > max_points)


@settings(max_examples=100, deadline=None)
@given(
    base=st.lists(finite_floats, min_size=50, max_size=2000),
    spike_at=st.floats(min_value=0, max_value=1, exclude_max=True),
    spike_up=st.booleans(),
    max_points=st.integers(min_value=MIN_POINTS, max_value=200),
)
def test_a_spike_anywhere_survives(
    base: list[float], spike_at: float, spike_up: bool, max_points: int
) -> None:
    y = np.array(base)
    where = int(spike_at * len(y))
    y[where] = 1e7 if spike_up else -1e7
    assert where in downsample_indices(y, max_points=max_points)


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(finite_floats, min_size=20, max_size=3000),
    max_points=st.integers(min_value=6, max_value=400),
)
def test_a_local_extreme_stronger_than_a_whole_bucket_around_it_survives(
    values: list[float], max_points: int
) -> None:
    # Whatever the bucket edges, a bucket holding point i lies within i ± width; a point
    # that is the strict extreme of that window is its bucket's extreme and must be kept.
    y = np.array(values)
    n = len(y)
    kept = set(downsample_indices(y, max_points=max_points).tolist())
    if n <= max_points:
        assert kept == set(range(n))
        return
    buckets = (max_points - 2) // 2
    width = math.ceil(n / buckets) + 1
    for i in range(n):
        window = np.concatenate((y[max(0, i - width) : i], y[i + 1 : i + width + 1]))
        if len(window) and (y[i] > window.max() or y[i] < window.min()):
            assert i in kept
