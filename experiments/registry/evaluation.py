"""Evaluation jobs: a registered checkpoint measured on its recipe's held-out set, stored on the version.

Promotion decisions compare a candidate with the production version by these numbers, so both
come from the same data and the same code (the recipe's `evaluate_checkpoint`), not from
whatever each training run happened to log last.
"""

from __future__ import annotations

import logging
from pathlib import Path

from django.db import transaction

from experiments.models import (
    EvaluationStatus,
    ModelVersion,
    RunEvaluation,
    VersionEvaluation,
    VersionEvaluationStatus,
)
from experiments.recipes import RECIPES
from experiments.runs.execution import file_sha256

logger = logging.getLogger(__name__)


def version_evaluation(*, version: ModelVersion) -> VersionEvaluation | None:
    """Return the version's latest succeeded evaluation, if it has one (a read)."""
    return (
        version.evaluations.filter(status=VersionEvaluationStatus.SUCCEEDED)
        .order_by("-created_at", "-id")
        .first()
    )


def _run_evaluation_of(version: ModelVersion) -> RunEvaluation | None:
    """Return the succeeded evaluation job of the run whose checkpoint the version froze, if any."""
    if version.run_id is None:
        return None
    return RunEvaluation.objects.filter(
        run_id=version.run_id,
        status=EvaluationStatus.SUCCEEDED,
        checkpoint_sha256=version.checkpoint_sha256,
    ).first()


def model_version_evaluate(*, version_id: int, again: bool = False) -> VersionEvaluation | None:
    """Evaluate the version's checkpoint on its recipe's held-out set and store the result.

    Returns the stored evaluation (a succeeded one is reused unless `again`), a failed one with
    the reason when the checkpoint cannot be read, or None when the recipe declares no held-out
    evaluation (or the version is gone). Loading the checkpoint imports torch: call it from a worker (the Celery task
    control.evaluate_version, or the control queue's promotion decision).
    """
    version = ModelVersion.objects.filter(pk=version_id).first()
    if version is None:
        return None  # deleted while the job waited on the queue
    if not again:
        existing = version_evaluation(version=version)
        if existing is not None:
            return existing
    spec = RECIPES.get(version.recipe)
    if spec is None or not spec.evaluator:
        return None
    job = _run_evaluation_of(version)
    if job is not None:
        # The run's evaluation job measured this very checkpoint: its numbers are the version's.
        with transaction.atomic():
            evaluation, _ = VersionEvaluation.objects.update_or_create(
                version=version,
                eval_set=job.eval_set,
                defaults={
                    "status": VersionEvaluationStatus.SUCCEEDED,
                    "metrics": {k: v for k, v in job.metrics.items() if v is not None},
                    "note": job.note,
                    "error": "",
                },
            )
        return evaluation
    fallback_set = f"{version.recipe} held-out set"
    try:
        path = Path(version.checkpoint_path)
        if not path.is_file():
            raise ValueError(f"checkpoint {path} is missing")
        if file_sha256(path) != version.checkpoint_sha256:
            raise ValueError(f"checkpoint {path} does not match its registered sha256")
        result = spec.evaluate_checkpoint(str(path))
    except Exception as exc:  # a broken checkpoint is a recorded failure, never a crashed decision
        logger.warning("evaluating %s v%s failed: %s", version.model_name, version.version, exc)
        with transaction.atomic():
            evaluation, _ = VersionEvaluation.objects.update_or_create(
                version=version,
                eval_set=fallback_set,
                defaults={"status": VersionEvaluationStatus.FAILED, "metrics": {}, "error": str(exc)[:2000]},
            )
        return evaluation
    with transaction.atomic():
        evaluation, _ = VersionEvaluation.objects.update_or_create(
            version=version,
            eval_set=result.eval_set,
            defaults={
                "status": VersionEvaluationStatus.SUCCEEDED,
                "metrics": {k: float(v) for k, v in result.metrics.items()},
                "note": result.note[:300],
                "error": "",
            },
        )
    return evaluation
