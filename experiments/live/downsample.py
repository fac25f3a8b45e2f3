"""Min/max-preserving downsampling of metric series to a point budget (spikes never vanish)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tsdownsample import MinMaxDownsampler

# Below this budget a chart cannot show first, last and one bucket's min and max.
MIN_POINTS = 4

_minmax = MinMaxDownsampler()


def downsample_indices(values: np.ndarray, *, max_points: int) -> np.ndarray:
    """Return the sorted indices of the points to keep, at most `max_points` of them.

    Finite values are split into contiguous buckets (tsdownsample's MinMax) and the
    minimum and maximum of every bucket are kept, so a single spike always survives;
    the first and last finite points are kept so the chart spans the whole range.
    Non-finite values (NaN, inf: NULL in the database) stand for gaps: the first point
    of every run of them is kept as a gap marker, thinned to one per bucket when the
    runs are too many.
    """
    if max_points < MIN_POINTS:
        raise ValueError(f"max_points must be at least {MIN_POINTS}")
    y = np.ascontiguousarray(values, dtype=np.float64)
    n = len(y)
    if n <= max_points:
        return np.arange(n, dtype=np.int64)

    finite = np.isfinite(y)
    finite_idx = np.flatnonzero(finite)
    gap_starts = _gap_starts(finite)

    gap_budget = 0
    if len(gap_starts):
        # Gaps get a quarter of the budget while there are finite points to draw.
        share = max_points if len(finite_idx) == 0 else max(1, max_points // 4)
        gap_budget = min(len(gap_starts), share)
        if len(gap_starts) > gap_budget:
            gap_starts = _thin(gap_starts, n=n, buckets=gap_budget)
            gap_budget = len(gap_starts)

    kept_finite = _minmax_finite(y, finite_idx, budget=max_points - gap_budget)
    return np.union1d(kept_finite, gap_starts).astype(np.int64)


def _gap_starts(finite: np.ndarray) -> np.ndarray:
    """Return the index where each run of non-finite values begins."""
    gaps = ~finite
    if not gaps.any():
        return np.empty(0, dtype=np.int64)
    starts = gaps & ~np.concatenate(([False], gaps[:-1]))
    return np.flatnonzero(starts)


def _thin(indices: np.ndarray, *, n: int, buckets: int) -> np.ndarray:
    """Keep the first index of each of `buckets` equal slices of 0..n that holds any."""
    bucket_of = indices * buckets // n
    _, first = np.unique(bucket_of, return_index=True)
    return indices[first]


def _minmax_finite(y: np.ndarray, finite_idx: np.ndarray, *, budget: int) -> np.ndarray:
    """Return indices (into y) of the finite points kept within `budget`."""
    m = len(finite_idx)
    if m <= budget:
        return finite_idx
    compact = np.ascontiguousarray(y[finite_idx])
    ends = np.array([0, m - 1], dtype=np.int64)
    # Two slots go to the first and last point, the rest to (min, max) pairs.
    n_out = (budget - 2) // 2 * 2
    if n_out < 2:
        picked = np.array([int(np.argmin(compact)), int(np.argmax(compact))], dtype=np.int64)
        # Not enough room for the ends as well: the extremes matter more.
        chosen = picked if budget < 4 else np.union1d(picked, ends)
    else:
        picked = _minmax.downsample(compact, n_out=n_out).astype(np.int64)
        chosen = np.union1d(picked, ends)
    return finite_idx[chosen]


def downsample_series(
    steps: Sequence[int], values: Sequence[float | None], *, max_points: int
) -> tuple[list[int], list[float | None], bool]:
    """Return (steps, values, downsampled) thinned to the budget; None values stay None (gaps)."""
    n = len(steps)
    if n <= max_points:
        return list(steps), list(values), False
    # None -> NaN through a float array; NaN -> None again on the way out.
    y = np.array(values, dtype=np.float64)
    keep = downsample_indices(y, max_points=max_points)
    step_arr = np.asarray(steps, dtype=np.int64)[keep]
    kept_values = y[keep]
    out_values: list[float | None] = kept_values.tolist()
    if not np.isfinite(kept_values).all():
        out_values = [v if np.isfinite(v) else None for v in out_values]  # type: ignore[arg-type]
    return step_arr.tolist(), out_values, True


# A roll-up bucket as read for a chart: (first_step, first_value, last_step, last_value,
# min_step, min_value, max_step, max_value, gap_step), the columns of MetricRollup.
RollupBucket = tuple[
    int, float | None, int, float | None, int | None, float | None, int | None, float | None, int | None
]

# Points one roll-up bucket can put on a chart: first, min, max, last and a gap marker.
POINTS_PER_BUCKET = 5


def bucket_points(bucket: RollupBucket) -> list[tuple[int, float | None]]:
    """Return the points a chart draws for one roll-up bucket, in step order, each step once.

    Its first and last point span it, its min and max keep every spike, and the first
    NULL (NaN/inf logged) marks a gap.
    """
    first_step, first_value, last_step, last_value, min_step, min_value, max_step, max_value, gap = bucket
    points = {first_step: first_value, last_step: last_value}
    if min_step is not None:
        points[min_step] = min_value
    if max_step is not None:
        points[max_step] = max_value
    if gap is not None:
        points[gap] = None
    return sorted(points.items())
