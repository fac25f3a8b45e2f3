"""A run's stages and artifacts: recorded by the worker's run context, read by the experiment page."""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from experiments.models import Run, RunArtifact, RunStage
from experiments.recipes.outputs import artifact_write, stage_name_error


def artifact_dir(*, experiment_id: int, run_id: int) -> Path:
    """Return the folder of one run's artifacts under ARTIFACTS_ROOT (beside its checkpoints)."""
    return Path(settings.ARTIFACTS_ROOT) / "artifacts" / f"experiment-{experiment_id}" / f"run-{run_id}"


def run_stage_record(*, run_id: int, name: str, seconds: float) -> RunStage | None:
    """Record a completed stage of the run; the first record of a name stands (returns None for a repeat)."""
    problem = stage_name_error(name)
    if problem:
        raise ValueError(problem)
    try:
        with transaction.atomic():
            return RunStage.objects.create(run_id=run_id, name=name, seconds=max(0.0, float(seconds)))
    except IntegrityError:
        return None  # recorded already (the runner's default after the recipe's own record)


def run_completed_stages(*, run: Run) -> frozenset[str]:
    """Return the stages this attempt and the experiment's earlier attempts completed."""
    names = RunStage.objects.filter(
        run__experiment_id=run.experiment_id, run__attempt__lte=run.attempt
    ).values_list("name", flat=True)
    return frozenset(names)


def run_artifact_store(
    *, run: Run, name: str, data: bytes | str | os.PathLike[str], kind: str = "file"
) -> RunArtifact:
    """Write the artifact under the run's folder and record its size and sha256 (a second save replaces it)."""
    stored = artifact_write(artifact_dir(experiment_id=run.experiment_id, run_id=run.pk), name, data, kind)
    artifact, _ = RunArtifact.objects.update_or_create(
        run=run,
        name=name,
        defaults={
            "kind": kind,
            "path": str(stored.path),
            "size": stored.size,
            "sha256": stored.sha256,
            "created_at": timezone.now(),
            "deleted_at": None,
        },
    )
    return artifact
