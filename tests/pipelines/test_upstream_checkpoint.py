"""A worker hands a run its upstream's final checkpoint only along a dependency, and only intact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from experiments.actors import Actor
from experiments.choices import RunStatus
from experiments.models import Experiment, Run
from experiments.pipelines.services import dependency_add
from experiments.runs.execution import DbRunContext, file_sha256
from experiments.runs.reporting import MetricReporter
from experiments.services import experiment_create, experiment_retrain, experiment_transition

pytestmark = pytest.mark.django_db


def _succeeded_with_checkpoint(experiment: Experiment, folder: Path) -> Path:
    path = folder / f"teacher-{experiment.pk}.pt"
    torch.save({"recipe": "digits", "arch": {"hidden": 8}, "model": {"w": torch.ones(2)}}, path)
    Run.objects.create(
        experiment=experiment,
        attempt=1,
        status=RunStatus.SUCCEEDED,
        checkpoint_path=str(path),
        checkpoint_sha256=file_sha256(path),
        checkpoint_size=path.stat().st_size,
    )
    return path


def _context(experiment: Experiment) -> DbRunContext:
    run = Run.objects.create(experiment=experiment, attempt=1, status=RunStatus.RUNNING)
    return DbRunContext(
        run=run, reporter=MetricReporter(experiment_id=experiment.pk, run_id=run.pk), timeout_seconds=60
    )


def test_the_checkpoint_goes_to_a_dependent_and_to_its_retrain_but_not_elsewhere(tmp_path: Path) -> None:
    teacher = experiment_create(name="teacher", recipe="digits")
    student = experiment_create(name="student", recipe="distill")
    stranger = experiment_create(name="stranger", recipe="distill")
    dependency_add(downstream=student, upstream=teacher)
    _succeeded_with_checkpoint(teacher, tmp_path)

    state = _context(student).upstream_checkpoint(teacher.pk)
    assert state["recipe"] == "digits" and torch.equal(state["model"]["w"], torch.ones(2))

    experiment_transition(experiment_id=student.pk, event="cancel", actor=Actor.system("test"))
    child = experiment_retrain(experiment_id=student.pk, actor=Actor.system("test"))
    assert child.config["teacher_experiment"] == teacher.pk
    assert _context(child).upstream_checkpoint(teacher.pk)["recipe"] == "digits"

    with pytest.raises(ValueError, match="is not a dependency"):
        _context(stranger).upstream_checkpoint(teacher.pk)


def test_a_checkpoint_changed_since_it_was_recorded_is_refused(tmp_path: Path) -> None:
    teacher = experiment_create(name="teacher", recipe="digits")
    student = experiment_create(name="student", recipe="distill")
    dependency_add(downstream=student, upstream=teacher)
    path = _succeeded_with_checkpoint(teacher, tmp_path)
    path.write_bytes(path.read_bytes() + b"tampered")
    with pytest.raises(ValueError, match="does not match its sha256"):
        _context(student).upstream_checkpoint(teacher.pk)
