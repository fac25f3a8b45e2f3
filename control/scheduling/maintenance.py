"""Housekeeping on beat: delete checkpoints (and the runs' artifacts with them) nobody can need any more."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from experiments.choices import State
from experiments.models import ModelVersion, Run, RunArtifact

logger = logging.getLogger(__name__)

# A checkpoint of these experiments can still be served, promoted, resumed or retried.
_KEEP_STATES = (
    State.QUEUED,
    State.RUNNING,
    State.EVALUATING,
    State.COMPLETED,
    State.PROMOTING,
    State.DEPLOYED,
)


def expired_checkpoints(*, now: datetime | None = None, retention_days: float | None = None) -> QuerySet[Run]:
    """Return runs whose checkpoint is past retention, whose experiment has ended, and that no model version uses."""
    now = now or timezone.now()
    days = settings.CHECKPOINT_RETENTION_DAYS if retention_days is None else retention_days
    # A registered model version serves from (or can be rolled back to) its checkpoint,
    # archived ones included: rollback restores the archived predecessor.
    registered = ModelVersion.objects.values("checkpoint_path")
    return (
        Run.objects.exclude(checkpoint_path="")
        .filter(finished_at__lt=now - timedelta(days=days))
        .exclude(experiment__state__in=_KEEP_STATES)
        .exclude(checkpoint_path__in=registered)
    )


def checkpoints_cleanup(*, now: datetime | None = None, retention_days: float | None = None) -> int:
    """Delete expired checkpoint files and forget their paths; return how many were removed."""
    removed = 0
    for run in expired_checkpoints(now=now, retention_days=retention_days):
        Path(run.checkpoint_path).unlink(missing_ok=True)
        Run.objects.filter(pk=run.pk).update(checkpoint_path="")
        removed += 1
    if removed:
        logger.info("removed %s expired checkpoints", removed)
    artifacts_cleanup(now=now, retention_days=retention_days)
    return removed


def expired_artifacts(
    *, now: datetime | None = None, retention_days: float | None = None
) -> QuerySet[RunArtifact]:
    """Return artifacts whose run is past checkpoint retention by the same rule: ended experiment, no model version."""
    now = now or timezone.now()
    days = settings.CHECKPOINT_RETENTION_DAYS if retention_days is None else retention_days
    # A registered version's run keeps its artifacts as long as its checkpoint (its evaluation report).
    registered_runs = ModelVersion.objects.filter(run__isnull=False).values("run_id")
    return (
        RunArtifact.objects.filter(deleted_at__isnull=True, run__finished_at__lt=now - timedelta(days=days))
        .exclude(run__experiment__state__in=_KEEP_STATES)
        .exclude(run_id__in=registered_runs)
    )


def artifacts_cleanup(*, now: datetime | None = None, retention_days: float | None = None) -> int:
    """Delete expired artifact files and mark their rows removed; return how many."""
    removed = 0
    for artifact in expired_artifacts(now=now, retention_days=retention_days):
        Path(artifact.path).unlink(missing_ok=True)
        RunArtifact.objects.filter(pk=artifact.pk).update(deleted_at=timezone.now())
        removed += 1
    if removed:
        logger.info("removed %s expired artifacts", removed)
    return removed
