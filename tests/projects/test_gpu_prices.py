"""GPU prices per project: the defaults price every project, a project's own rule wins for its experiments."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.core.exceptions import ValidationError
from django.test import Client
from django.utils import timezone

from control.models import GpuPrice
from control.scheduling.cost import estimated_cost, spend_today
from control.scheduling.scheduler import scheduler_plan
from experiments.choices import RunStatus, State
from experiments.models import Experiment, Membership, Project, Role, Run
from tests.control.helpers import H100_MB, make_worker, queued

pytestmark = pytest.mark.django_db


@pytest.fixture
def projects() -> tuple[Project, Project]:
    """Return vision, which pays $1/h for an H100 of its own, and nlp, which pays the $4/h default."""
    vision = Project.objects.create(name="Vision", slug="vision")
    nlp = Project.objects.create(name="Nlp", slug="nlp")
    GpuPrice.objects.create(gpu_type="H100", usd_per_hour=Decimal("4"))
    GpuPrice.objects.create(gpu_type="cpu", usd_per_hour=Decimal("0.5"))
    GpuPrice.objects.create(gpu_type="H100", usd_per_hour=Decimal("1"), project=vision)
    return vision, nlp


def _ran(project: Project, *, name: str, gpus: int, hours: float) -> Run:
    """Return a run of a new H100 experiment of the project that started `hours` ago and still runs."""
    experiment = queued(name, project=project, gpus=gpus, gpu_type="H100")
    Experiment.objects.filter(pk=experiment.pk).update(state=State.RUNNING)
    return Run.objects.create(
        experiment=experiment, attempt=1, status=RunStatus.RUNNING, worker="w", device="cuda",
        task_id=f"t-{name}", started_at=timezone.now() - timedelta(hours=hours),
    )  # fmt: skip


def test_a_projects_own_price_wins_for_its_experiments_and_the_default_prices_the_rest(
    projects: tuple[Project, Project],
) -> None:
    vision, nlp = projects
    two_h100: dict[str, Any] = {"gpus": 2, "gpu_type": "H100", "timeout_seconds": 3600}
    assert estimated_cost(queued("v", project=vision, **two_h100)) == Decimal("2.0000")
    assert estimated_cost(queued("n", project=nlp, **two_h100)) == Decimal("8.0000")
    # A type the project did not price takes the default.
    assert estimated_cost(queued("v-cpu", project=vision, gpus=0, timeout_seconds=3600)) == Decimal("0.5000")


def test_spend_today_prices_each_run_at_its_projects_prices_and_counts_one_project_on_request(
    projects: tuple[Project, Project],
) -> None:
    vision, nlp = projects
    _ran(vision, name="v", gpus=2, hours=1)  # 2 GPU-hours at $1
    _ran(nlp, name="n", gpus=1, hours=1)  # 1 GPU-hour at $4
    assert spend_today(project_id=vision.pk) == pytest.approx(Decimal("2"), abs=Decimal("0.01"))
    assert spend_today(project_id=nlp.pk) == pytest.approx(Decimal("4"), abs=Decimal("0.01"))
    assert spend_today() == pytest.approx(Decimal("6"), abs=Decimal("0.01"))


def test_a_project_budget_counts_its_own_runs_at_its_own_prices(projects: tuple[Project, Project]) -> None:
    vision, nlp = projects
    make_worker("gpu-host", gpus=[("H100", H100_MB)] * 8)
    Project.objects.filter(pk__in=[vision.pk, nlp.pk]).update(daily_budget_usd=Decimal("10"))
    _ran(vision, name="v-live", gpus=2, hours=3)  # $6 at vision's $1 (it would be $24 at the default)
    _ran(nlp, name="n-live", gpus=1, hours=1.5)  # $6 at the $4 default
    queued("v-next", project=vision, gpus=2, gpu_type="H100", timeout_seconds=3600)  # $2 more: $8
    queued("n-next", project=nlp, gpus=2, gpu_type="H100", timeout_seconds=3600)  # $8 more: $14
    plan = {d.experiment.name: d for d in scheduler_plan().decisions}
    assert len(plan["v-next"].devices) == 2, plan["v-next"].reason
    assert plan["n-next"].devices == []
    assert plan["n-next"].reason.startswith("project nlp: $6.00"), plan["n-next"].reason


def test_one_default_and_one_rule_per_project_for_each_gpu_type(projects: tuple[Project, Project]) -> None:
    vision, nlp = projects
    with pytest.raises(ValidationError, match="default price for this GPU type exists"):
        GpuPrice(gpu_type="H100", usd_per_hour=Decimal("3")).full_clean()
    with pytest.raises(ValidationError, match="This project has a price"):
        GpuPrice(gpu_type="H100", usd_per_hour=Decimal("3"), project=vision).full_clean()
    GpuPrice(gpu_type="H100", usd_per_hour=Decimal("3"), project=nlp).full_clean()


def test_staff_see_the_defaults_and_their_projects_prices_only(projects: tuple[Project, Project]) -> None:
    vision, nlp = projects
    GpuPrice.objects.create(gpu_type="A100", usd_per_hour=Decimal("7.7700"), project=nlp)
    staff = User.objects.create_user("carol", password="pw-carol-123", is_staff=True)
    Membership.objects.create(user=staff, project=vision, role=Role.ADMIN)
    staff.user_permissions.add(*Permission.objects.filter(codename__endswith="_gpuprice"))
    client = Client()
    client.force_login(staff)
    page = client.get("/admin/control/gpuprice/").content.decode()
    assert "4.0000" in page and "1.0000" in page  # the default and vision's own H100
    assert "7.7700" not in page and "Nlp" not in page
    nlp_rule = GpuPrice.objects.get(project=nlp)
    assert client.get(f"/admin/control/gpuprice/{nlp_rule.pk}/change/").status_code == 302
    # A new rule may name only a project the staff member administers.
    form = client.get("/admin/control/gpuprice/add/").content.decode()
    assert "Vision" in form and "Nlp" not in form
    refused = client.post(
        "/admin/control/gpuprice/add/", {"gpu_type": "L4", "usd_per_hour": "0.3", "project": nlp.pk}
    )
    assert refused.status_code == 200 and "Select a valid choice" in refused.content.decode()
    assert not GpuPrice.objects.filter(gpu_type="L4").exists()
