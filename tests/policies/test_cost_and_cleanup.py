"""Cost-aware scheduling (budget, concurrency) and the checkpoint cleanup sweep."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone

from control.policies.models import GpuPrice, Policy, PolicyKind
from control.scheduling.cost import estimated_cost, price_per_hour, spend_today
from control.scheduling.maintenance import checkpoints_cleanup
from control.scheduling.scheduler import concurrency_limit, scheduler_plan
from experiments.choices import RunStatus
from experiments.models import Run
from tests.control.helpers import make_worker, queued
from tests.policies.helpers import experiment_through

pytestmark = pytest.mark.django_db


def spent_run(minutes: float, *, end: datetime | None = None) -> Run:
    """A run that trained for `minutes` until `end` (default: just now)."""
    experiment = experiment_through("queue", "start", "complete", name="spent")
    end = end or timezone.now()
    return Run.objects.create(
        experiment=experiment,
        attempt=1,
        status=RunStatus.SUCCEEDED,
        started_at=end - timedelta(minutes=minutes),
        finished_at=end,
    )


def noon_today() -> datetime:
    return timezone.now().replace(hour=12, minute=0, second=0, microsecond=0)


def test_prices_follow_the_device_and_unknown_gpus_take_the_dearest() -> None:
    prices = {"cpu": Decimal("0.10"), "H100": Decimal("2.50"), "A10": Decimal("0.80")}
    assert price_per_hour(gpus=0, gpu_type="", prices=prices) == Decimal("0.10")
    assert price_per_hour(gpus=2, gpu_type="a10", prices=prices) == Decimal("1.60")
    assert price_per_hour(gpus=1, gpu_type="B200", prices=prices) == Decimal("2.50")


def test_spend_today_counts_run_time_at_its_price() -> None:
    GpuPrice.objects.create(gpu_type="cpu", usd_per_hour=Decimal("6"))
    noon = noon_today()
    spent_run(10, end=noon)  # 10 minutes at $6/h
    spent_run(10, end=noon - timedelta(days=1))  # yesterday's does not count
    assert spend_today(now=noon) == pytest.approx(Decimal("1.00"), abs=Decimal("0.01"))
    # A run that crossed midnight counts from midnight on.
    midnight = noon.replace(hour=0)
    spent_run(20, end=midnight + timedelta(minutes=5))
    assert spend_today(now=noon) == pytest.approx(Decimal("1.50"), abs=Decimal("0.01"))


def test_with_the_budget_spent_queued_experiments_wait_and_the_queue_says_why() -> None:
    # $6000/h: whatever part of the last hour falls in today is well past a $5 budget.
    GpuPrice.objects.create(gpu_type="cpu", usd_per_hour=Decimal("6000"))
    Policy.objects.create(name="cost_aware_schedule", kind=PolicyKind.COST, daily_budget_usd=Decimal("5"))
    make_worker("w1", cpu=1)
    spent_run(60)
    waiting = queued("over budget", timeout_seconds=60)

    [decision] = scheduler_plan().decisions
    assert decision.devices == []
    assert "daily budget of cost_aware_schedule" in decision.reason and "would pass $5.00" in decision.reason

    user = User.objects.create_user("ops", password="pw")
    # The queue lists the experiments the user may see (the default project's, by permission).
    user.user_permissions.add(*Permission.objects.filter(codename__in=["view_device", "view_experiment"]))
    client = Client()
    client.force_login(user)
    page = client.get("/gpus/").content.decode()
    assert waiting.name in page and "daily budget of cost_aware_schedule" in page


def test_under_budget_the_experiment_gets_a_device() -> None:
    GpuPrice.objects.create(gpu_type="cpu", usd_per_hour=Decimal("1"))
    Policy.objects.create(name="budget", kind=PolicyKind.COST, daily_budget_usd=Decimal("100"))
    make_worker("w1", cpu=1)
    queued("cheap", timeout_seconds=600)
    [decision] = scheduler_plan().decisions
    assert decision.reason == "" and len(decision.devices) == 1


def test_the_estimate_uses_the_recipes_past_run_time() -> None:
    GpuPrice.objects.create(gpu_type="cpu", usd_per_hour=Decimal("6"))
    spent_run(30, end=noon_today() - timedelta(days=1))
    candidate = experiment_through(name="next", timeout_seconds=3600)
    assert estimated_cost(candidate) == pytest.approx(Decimal("3.00"), abs=Decimal("0.01"))


def test_a_cost_policy_caps_concurrent_runs() -> None:
    assert concurrency_limit() is None
    Policy.objects.create(name="cap", kind=PolicyKind.COST, max_concurrent_runs=3)
    Policy.objects.create(name="tighter", kind=PolicyKind.COST, max_concurrent_runs=2)
    Policy.objects.create(name="off", kind=PolicyKind.COST, max_concurrent_runs=1, enabled=False)
    assert concurrency_limit() == 2


def test_cleanup_deletes_old_checkpoints_of_ended_experiments_only(tmp_path: Path) -> None:
    old = timezone.now() - timedelta(days=40)

    def run_with_file(name: str, *events: str) -> Path:
        experiment = experiment_through(*events, name=name)
        path = tmp_path / f"{name}.pt"
        path.write_bytes(b"weights")
        Run.objects.create(experiment=experiment, attempt=1, checkpoint_path=str(path), finished_at=old)
        return path

    ended = run_with_file("cancelled", "cancel")
    deployed = run_with_file("deployed", "queue", "start", "complete", "promote", "deploy")
    assert checkpoints_cleanup(retention_days=30) == 1
    assert not ended.exists() and deployed.exists()
    assert checkpoints_cleanup(retention_days=30) == 0


def test_cleanup_keeps_the_checkpoint_of_a_registered_model_version(tmp_path: Path) -> None:
    from experiments.models import ModelVersion

    experiment = experiment_through("queue", "start", "complete", "promote", "rollback", name="rolled back")
    path = tmp_path / "v1.pt"
    path.write_bytes(b"weights")
    run = Run.objects.create(
        experiment=experiment,
        attempt=1,
        checkpoint_path=str(path),
        finished_at=timezone.now() - timedelta(days=90),
    )
    ModelVersion.objects.filter(experiment=experiment).delete()  # whatever the hooks registered
    ModelVersion.objects.create(
        model_name="digits", version=1, experiment=experiment, run=run, checkpoint_path=str(path),
        checkpoint_sha256="0" * 64, checkpoint_size=7, stage="archived",
    )  # fmt: skip
    assert checkpoints_cleanup(retention_days=30) == 0
    assert path.exists()


def test_cleanup_removes_the_artifacts_of_expired_runs_with_their_checkpoints(tmp_path: Path) -> None:
    from experiments.models import RunArtifact
    from experiments.runs.outputs import run_artifact_store

    old = timezone.now() - timedelta(days=40)

    def run_with_artifact(name: str, *events: str) -> RunArtifact:
        experiment = experiment_through(*events, name=name)
        path = tmp_path / f"{name}.pt"
        path.write_bytes(b"weights")
        run = Run.objects.create(experiment=experiment, attempt=1, checkpoint_path=str(path), finished_at=old)
        return run_artifact_store(run=run, name="samples.txt", data="def f():", kind="samples")

    ended = run_with_artifact("cancelled", "cancel")
    deployed = run_with_artifact("deployed", "queue", "start", "complete", "promote", "deploy")
    checkpoints_cleanup(retention_days=30)

    ended.refresh_from_db()
    deployed.refresh_from_db()
    assert ended.deleted_at is not None and not Path(ended.path).exists()
    assert deployed.deleted_at is None and Path(deployed.path).exists()
