"""Drift checks of served versions: their newest served inputs against their training data."""

from __future__ import annotations

import numpy as np
from django.conf import settings

import experiments.registry.serving as serving
from experiments.models import DriftCheck, ModelVersion, ServedRequest
from experiments.registry.drift import drift_score


def served_window(version: ModelVersion, rows: int) -> np.ndarray:
    """Return up to `rows` of the newest input rows the version served (rows x features)."""
    collected: list[list[float]] = []
    recent = (
        ServedRequest.objects.filter(version=version, ok=True)
        .order_by("-created_at", "-id")
        .values_list("inputs", flat=True)
    )
    for inputs in recent.iterator(chunk_size=500):
        collected.extend(inputs or [])
        if len(collected) >= rows:
            break
    return np.asarray(collected[:rows], dtype=np.float32)


def drift_check(
    version: ModelVersion, *, window_rows: int | None = None, min_rows: int | None = None
) -> DriftCheck:
    """Measure and record the version's drift; the score stays None while too few rows were served."""
    window_rows = window_rows or settings.DRIFT_WINDOW_ROWS
    min_rows = min_rows or settings.DRIFT_MIN_ROWS
    loaded = serving.load_version(version)
    window = served_window(version, window_rows)
    if loaded.reference is None:
        return DriftCheck.objects.create(
            version=version, window_rows=len(window), detail="this recipe has no drift reference"
        )
    if len(window) < min_rows:
        return DriftCheck.objects.create(
            version=version,
            window_rows=len(window),
            detail=f"{len(window)} served rows; drift is measured from {min_rows}",
        )
    result = drift_score(loaded.reference, window)
    return DriftCheck.objects.create(
        version=version,
        score=result.score,
        max_feature_psi=result.max_feature_psi,
        window_rows=result.window_rows,
        top_features=result.top_features(),
        detail=f"mean PSI {result.score:.4f} over {loaded.n_features} features, {result.window_rows} rows",
    )
