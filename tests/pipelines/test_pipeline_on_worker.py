"""A teacher → student pipeline through a real Celery worker: one start, the student distils the teacher."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from experiments.actors import Actor
from experiments.choices import RunStatus, State
from experiments.models import Experiment, Run, TransitionLog
from experiments.pipelines.services import dependency_add, pipeline_start
from experiments.services import experiment_create
from tests.conftest import WorkerHandle, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


def _state(experiment: Experiment) -> str:
    experiment.refresh_from_db()
    return str(experiment.state)


def test_starting_the_pipeline_trains_the_teacher_then_the_student_on_its_checkpoint(
    start_celery_worker: Callable[..., WorkerHandle],
) -> None:
    start_celery_worker()
    teacher = experiment_create(
        name="teacher", recipe="digits", config={"epochs": 4, "hidden": 64, "seed": 4}
    )
    student = experiment_create(
        name="student", recipe="distill", config={"epochs": 4, "student_hidden": 16, "seed": 4}
    )
    dependency_add(downstream=student, upstream=teacher)

    pipeline_start(experiment_id=student.pk, actor=Actor.system("test"))
    assert _state(student) == State.WAITING

    wait_for(lambda: _state(student) == State.EVALUATING, timeout=120, what="the student to finish training")
    assert _state(teacher) == State.EVALUATING
    release = TransitionLog.objects.get(experiment=student, event="release")
    assert release.actor == "system:pipeline"
    assert f"#{teacher.pk} 'teacher' is evaluating" in release.reason
    teacher_done = TransitionLog.objects.get(experiment=teacher, event="complete")
    assert release.created_at >= teacher_done.created_at

    run = Run.objects.get(experiment=student)
    assert run.status == RunStatus.SUCCEEDED
    assert run.config["teacher_experiment"] == teacher.pk
    # The student trained alone: no teacher phase, and the teacher's figures are the upstream's.
    assert "teacher_loss" not in set(student.points.values_list("name", flat=True))
    teacher_run = Run.objects.get(experiment=teacher)
    assert run.final_metrics["teacher_accuracy"] == pytest.approx(
        teacher_run.final_metrics["accuracy"], abs=1e-6
    )
    assert run.final_metrics["accuracy"] > 0.5
