"""Per-project limits at admission: the scheduler says which project limit holds an experiment back."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from control.models import Device, GpuPrice
from control.scheduling.scheduler import Decision, scheduler_plan
from experiments.choices import RunStatus, State
from experiments.models import Experiment, Project, Run
from tests.control.helpers import H100_MB, make_worker, queued

pytestmark = pytest.mark.django_db


def _running(project: Project, *, gpus: int, hours_ago: float = 0.5, name: str = "live") -> Run:
    """Return a live run of a new experiment of the project holding `gpus` leased GPUs."""
    experiment = queued(name, project=project, gpus=gpus)
    Experiment.objects.filter(pk=experiment.pk).update(state=State.RUNNING)
    run = Run.objects.create(
        experiment=experiment, attempt=1, status=RunStatus.RUNNING, worker="w", device="cuda",
        task_id=f"t-{name}", started_at=timezone.now() - timedelta(hours=hours_ago),
    )  # fmt: skip
    free = Device.objects.filter(leased_run__isnull=True, kind="gpu").order_by("pk")[:gpus]
    Device.objects.filter(pk__in=[d.pk for d in free]).update(leased_run=run)
    return run


def _decision(name: str) -> Decision:
    return next(d for d in scheduler_plan().decisions if d.experiment.name == name)


@pytest.fixture
def projects() -> tuple[Project, Project]:
    make_worker("gpu-host", gpus=[("H100", H100_MB)] * 8)
    return Project.objects.create(name="Vision", slug="vision"), Project.objects.create(
        name="Nlp", slug="nlp"
    )


def test_a_project_at_its_gpu_quota_waits_while_another_project_runs(
    projects: tuple[Project, Project],
) -> None:
    vision, nlp = projects
    Project.objects.filter(pk=vision.pk).update(max_gpus=4)
    _running(vision, gpus=4)
    queued("vision-next", project=vision, gpus=1)
    queued("nlp-next", project=nlp, gpus=1)
    waiting = _decision("vision-next")
    assert waiting.devices == []
    assert waiting.reason == "project vision: 4 of 4 GPUs in use (this run wants 1)"
    assert len(_decision("nlp-next").devices) == 1


def test_one_pass_admits_no_more_than_the_project_cap(projects: tuple[Project, Project]) -> None:
    vision, _ = projects
    Project.objects.filter(pk=vision.pk).update(max_concurrent_runs=1)
    queued("first", project=vision, gpus=1, waited_min=5)
    queued("second", project=vision, gpus=1)
    plan = {d.experiment.name: d for d in scheduler_plan().decisions}
    assert len(plan["first"].devices) == 1
    assert plan["second"].devices == []
    assert plan["second"].reason == "project vision: 1 of 1 concurrent runs"


def test_a_project_past_its_gpu_hours_for_the_day_waits(projects: tuple[Project, Project]) -> None:
    vision, _ = projects
    Project.objects.filter(pk=vision.pk).update(gpu_hours_per_day=Decimal("6.5"))
    _running(vision, gpus=2, hours_ago=3)  # 6 GPU-hours so far today
    queued("more", project=vision, gpus=1, timeout_seconds=3600)  # about 1 more
    reason = _decision("more").reason
    assert reason.startswith("project vision: 6.0 of 6.5 GPU-hours used today + 1.0 expected")


def test_a_project_past_its_daily_budget_waits_and_says_how_much(projects: tuple[Project, Project]) -> None:
    vision, nlp = projects
    GpuPrice.objects.create(gpu_type="H100", usd_per_hour=Decimal("2"))
    Project.objects.filter(pk=vision.pk).update(daily_budget_usd=Decimal("10"))
    _running(vision, gpus=2, hours_ago=1.9)  # $7.60 so far
    queued("dear", project=vision, gpus=1, gpu_type="H100", timeout_seconds=3600)  # $2 more: $10 is not past
    queued("dearer", project=vision, gpus=2, gpu_type="H100", timeout_seconds=3600)  # $4 more
    queued("nlp-free", project=nlp, gpus=2, gpu_type="H100", timeout_seconds=3600)
    plan = {d.experiment.name: d for d in scheduler_plan().decisions}
    assert plan["dear"].devices and plan["nlp-free"].devices
    assert plan["dearer"].devices == []
    assert plan["dearer"].reason.startswith("project vision: $")
    assert "daily budget of $10.00" in plan["dearer"].reason


def test_a_project_without_limits_is_not_held_back(projects: tuple[Project, Project]) -> None:
    vision, _ = projects
    _running(vision, gpus=4)
    queued("free", project=vision, gpus=4)
    assert len(_decision("free").devices) == 4
