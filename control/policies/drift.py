"""The drift sweep: measure every production version's served inputs and let drift policies act."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django.utils import timezone

from control.policies.engine import engine_on_drift
from experiments.models import ModelStage, ModelVersion
from experiments.registry.drift_checks import drift_check
from experiments.registry.serving import ServingError

logger = logging.getLogger(__name__)


def drift_sweep(*, now: datetime | None = None) -> list[dict[str, Any]]:
    """Check drift of each servable production version; a measured score goes to the engine."""
    now = now or timezone.now()
    report = []
    for version in ModelVersion.objects.filter(stage=ModelStage.PRODUCTION, serve_error=""):
        try:
            check = drift_check(version)
        except ServingError as exc:
            logger.warning("drift of %s not measured: %s", version, exc.message)
            continue
        fired = []
        if check.score is not None and version.experiment_id is not None:
            fired = engine_on_drift(experiment_id=version.experiment_id, drift_score=check.score, now=now)
        report.append(
            {
                "model": version.model_name,
                "version": version.version,
                "score": check.score,
                "rows": check.window_rows,
                "triggers": [t.pk for t in fired],
            }
        )
    return report
