"""Drift of served inputs against a model's training data: per-feature PSI, combined into one score.

Each feature's reference (training) values are cut into up to BINS quantile bins; the served
window is counted into the same bins and the population stability index
    PSI = sum((served% - reference%) * ln(served% / reference%))
is computed per feature. The drift score is the mean PSI over all features (a border pixel that
is constant in training adds ~0 until served inputs light it up).
Rules of thumb for PSI: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 large shift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BINS = 10
# Proportions are floored at this so an empty bin does not make the log infinite.
EPSILON = 1e-4


@dataclass(frozen=True)
class DriftResult:
    """The drift score of a window, and the features that moved most."""

    score: float
    max_feature_psi: float
    per_feature: list[float]
    window_rows: int

    def top_features(self, n: int = 5) -> list[tuple[int, float]]:
        """Return the n features with the largest PSI, worst first."""
        order = np.argsort(self.per_feature)[::-1][:n]
        return [(int(i), round(float(self.per_feature[i]), 4)) for i in order]


def _edges(reference: np.ndarray) -> np.ndarray:
    """Return the inner bin edges of one feature: its reference quantiles, without repeats."""
    quantiles = np.quantile(reference, np.linspace(0, 1, BINS + 1)[1:-1])
    return np.unique(quantiles)


def _proportions(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    # side="left": bin i holds (edges[i-1], edges[i]], so a value equal to an edge falls below it.
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
    return np.maximum(counts / max(len(values), 1), EPSILON)


def feature_psi(reference: np.ndarray, window: np.ndarray) -> float:
    """Return the PSI of one feature's served values against its reference values."""
    edges = _edges(reference)
    expected = _proportions(reference, edges)
    actual = _proportions(window, edges)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def drift_score(reference: np.ndarray, window: np.ndarray) -> DriftResult:
    """Return the drift of window (rows x features) against reference (rows x features)."""
    if reference.ndim != 2 or window.ndim != 2 or reference.shape[1] != window.shape[1]:
        raise ValueError(f"reference {reference.shape} and window {window.shape} must share their columns")
    per_feature = [feature_psi(reference[:, j], window[:, j]) for j in range(reference.shape[1])]
    score = float(np.mean(per_feature)) if per_feature else 0.0
    return DriftResult(
        score=score,
        max_feature_psi=float(max(per_feature, default=0.0)),
        per_feature=per_feature,
        window_rows=int(window.shape[0]),
    )


def shift_inputs(x: np.ndarray, shift: float, *, high: float = 16.0) -> np.ndarray:
    """Return inputs shifted by shift x the value range, clipped to it (drift for demos and tests).

    The digits are 0-16 intensities: a shift of 0.25 brightens every pixel by 4 levels.
    """
    return np.clip(x + shift * high, 0.0, high)
