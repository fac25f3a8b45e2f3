"""Stages on the worker's run context: recorded with durations, and skipped by a resumed attempt."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from experiments.choices import RunStatus
from experiments.models import Experiment, MetricPoint, Run, RunArtifact, RunStage
from experiments.recipes import get_spec
from experiments.runs.execution import DbRunContext, file_sha256
from experiments.runs.reporting import MetricReporter
from experiments.runs.services import run_create
from experiments.selectors import experiment_stage_checklist
from experiments.services import experiment_create

pytestmark = pytest.mark.django_db(transaction=True)


class _DiskFullOnExport(DbRunContext):
    """A worker whose disk fills up just as the recipe exports its model."""

    def save_artifact(self, name: str, data: bytes | str | os.PathLike[str], kind: str = "file") -> None:
        raise OSError("No space left on device")


def _attempt(experiment: Experiment) -> Run:
    run = run_create(experiment=experiment, worker="w1", device="cpu", task_id="")
    Run.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING)
    run.refresh_from_db()
    return run


def _train(context_class: type[DbRunContext], run: Run) -> None:
    reporter = MetricReporter(experiment_id=run.experiment_id, run_id=run.pk).start()
    try:
        ctx = context_class(run=run, reporter=reporter, timeout_seconds=600)
        get_spec("digits").load().train(ctx, dict(run.config))
    finally:
        reporter.close()


def test_a_resumed_attempt_skips_the_stages_an_earlier_attempt_completed() -> None:
    experiment = experiment_create(name="stages", recipe="digits", config={"epochs": 2})
    first = _attempt(experiment)
    with pytest.raises(OSError, match="No space left"):
        _train(_DiskFullOnExport, first)
    assert set(RunStage.objects.filter(run=first).values_list("name", flat=True)) == {"load_data", "train"}
    trained_steps = MetricPoint.objects.filter(run=first, name="loss").count()
    assert trained_steps == 2 * 23

    second = _attempt(experiment)
    _train(DbRunContext, second)

    second.refresh_from_db()
    first.refresh_from_db()
    # Training was not done again: the second attempt loaded the first one's final checkpoint and
    # went straight to the export.
    assert not MetricPoint.objects.filter(run=second, name="loss").exists()
    assert second.resumed_from_step == first.checkpoint_step == trained_steps
    assert list(RunStage.objects.filter(run=second).values_list("name", flat=True)) == ["export"]
    model = RunArtifact.objects.get(run=second, name="model.pt")
    assert model.kind == "model" and Path(model.path).is_file()
    assert model.size == Path(model.path).stat().st_size and model.sha256 == file_sha256(Path(model.path))

    checklist = [
        (row.name, row.done, row.attempt) for row in experiment_stage_checklist(experiment=experiment)
    ]
    assert checklist == [
        ("load_data", True, 1),
        ("train", True, 1),
        ("export", True, 2),
        ("evaluate", False, None),
    ]
    train_row = next(r for r in experiment_stage_checklist(experiment=experiment) if r.name == "train")
    assert train_row.seconds is not None and train_row.seconds > 0
