"""Cost-aware ordering: within a class, expected improvement per dollar first; the queue shows both numbers."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone

from control.models import PolicyKind
from control.policies.authoring import policy_create
from control.policies.models import GpuPrice
from control.scheduling.ordering import PastRun, expected_improvement
from control.scheduling.scheduler import scheduler_plan
from experiments.choices import RunStatus
from experiments.models import Run
from experiments.services import experiment_create
from tests.control.helpers import queued

KEYS = ["hidden", "lr", "epochs"]


def test_without_history_there_is_no_estimate() -> None:
    assert expected_improvement({"hidden": 64}, [], better="higher", keys=KEYS)[0] is None


def test_repeating_the_best_config_is_expected_to_gain_nothing() -> None:
    past = [
        PastRun({"hidden": 64, "lr": 0.003, "epochs": 10}, 0.90),
        PastRun({"hidden": 256, "lr": 0.003, "epochs": 30}, 0.97),
    ]
    gain, _ = expected_improvement(
        {"hidden": 256, "lr": 0.003, "epochs": 30}, past, better="higher", keys=KEYS
    )
    assert gain == pytest.approx(0.0, abs=1e-3)


def test_an_unexplored_config_near_the_best_is_expected_to_gain() -> None:
    past = [
        PastRun({"hidden": 64, "lr": 0.003, "epochs": 10}, 0.90),
        PastRun({"hidden": 256, "lr": 0.003, "epochs": 30}, 0.97),
    ]
    near_best, _ = expected_improvement(
        {"hidden": 512, "lr": 0.003, "epochs": 30}, past, better="higher", keys=KEYS
    )
    near_worst, _ = expected_improvement(
        {"hidden": 32, "lr": 0.003, "epochs": 10}, past, better="higher", keys=KEYS
    )
    assert near_best is not None and near_worst is not None
    assert near_best > near_worst >= 0.0


def test_for_a_loss_lower_is_the_improvement() -> None:
    past = [PastRun({"hidden": 64}, 2.0), PastRun({"hidden": 128}, 1.5)]
    gain, basis = expected_improvement({"hidden": 256}, past, better="lower", keys=["hidden"])
    assert gain is not None and gain > 0
    assert "best 1.5" in basis


def _past_run(config: dict[str, Any], accuracy: float, *, minutes: float = 10.0) -> None:
    experiment = experiment_create(name=f"past {config}", recipe="digits", config=config)
    finished = timezone.now() - timedelta(hours=1)
    Run.objects.create(
        experiment=experiment,
        attempt=1,
        status=RunStatus.SUCCEEDED,
        config=experiment.config,
        started_at=finished - timedelta(minutes=minutes),
        finished_at=finished,
        final_metrics={"accuracy": accuracy},
    )


@pytest.fixture
def history(db: Any) -> None:
    GpuPrice.objects.create(gpu_type="cpu", usd_per_hour=Decimal("1.00"))
    GpuPrice.objects.create(gpu_type="H100", usd_per_hour=Decimal("4.00"))
    _past_run({"hidden": 64, "epochs": 10}, 0.90)
    _past_run({"hidden": 256, "epochs": 30}, 0.97)


@pytest.mark.django_db
def test_within_a_class_the_best_value_per_dollar_goes_first_and_classes_still_come_first(
    history: None,
) -> None:
    policy_create(name="cost", kind=PolicyKind.COST, priority_by="improvement_per_dollar")
    repeat = queued("repeat of the best", waited_min=30, priority=9, config={"hidden": 256, "epochs": 30})
    promising = queued("wider than the best", waited_min=1, priority=1, config={"hidden": 512, "epochs": 30})
    dear = queued("wider on a GPU", waited_min=1, priority=1, gpus=1, config={"hidden": 512, "epochs": 30})
    urgent = queued("urgent", priority_class="interactive", config={"hidden": 256, "epochs": 30})
    plan = scheduler_plan()
    assert plan.ordering == "improvement_per_dollar"
    assert [d.experiment.pk for d in plan.decisions] == [urgent.pk, promising.pk, dear.pk, repeat.pk]
    estimates = {d.experiment.pk: d.estimate for d in plan.decisions}
    promising_estimate, dear_estimate, repeat_estimate = (
        estimates[promising.pk],
        estimates[dear.pk],
        estimates[repeat.pk],
    )
    assert promising_estimate is not None and dear_estimate is not None and repeat_estimate is not None
    assert promising_estimate.improvement == pytest.approx(dear_estimate.improvement)
    assert dear_estimate.cost_usd == pytest.approx(4 * promising_estimate.cost_usd, rel=1e-3)
    assert repeat_estimate.improvement == pytest.approx(0.0, abs=1e-3)


@pytest.mark.django_db
def test_a_recipe_without_history_explores_first_cheapest_first(history: None) -> None:
    policy_create(name="cost", kind=PolicyKind.COST, priority_by="improvement_per_dollar")
    known = queued("known digits", waited_min=5, config={"hidden": 512, "epochs": 30})
    lm = experiment_create(name="first charlm", recipe="charlm")
    from experiments.actors import Actor
    from experiments.services import experiment_transition

    experiment_transition(experiment_id=lm.pk, event="queue", actor=Actor.system("test"))
    plan = scheduler_plan()
    assert [d.experiment.pk for d in plan.decisions] == [lm.pk, known.pk]
    assert plan.decisions[0].estimate is not None and plan.decisions[0].estimate.improvement is None


@pytest.mark.django_db
def test_without_an_ordering_policy_the_plain_order_stands(history: None) -> None:
    first = queued("old", waited_min=30, config={"hidden": 256, "epochs": 30})
    second = queued("new", waited_min=1, config={"hidden": 512, "epochs": 30})
    plan = scheduler_plan()
    assert plan.ordering == "" and [d.experiment.pk for d in plan.decisions] == [first.pk, second.pk]
    assert all(d.estimate is None for d in plan.decisions)


@pytest.mark.django_db
def test_the_queue_api_shows_the_numbers_and_the_rank(history: None) -> None:
    policy_create(name="cost", kind=PolicyKind.COST, priority_by="improvement_per_dollar")
    queued("repeat", waited_min=30, config={"hidden": 256, "epochs": 30})
    queued("promising", config={"hidden": 512, "epochs": 30})
    viewer = User.objects.create_user("gpu-viewer")
    viewer.user_permissions.add(
        Permission.objects.get(codename="view_device"), Permission.objects.get(codename="view_experiment")
    )
    client = Client()
    client.force_login(viewer)
    data = client.get("/api/scheduler/queue").json()
    assert data["ordering"] == "improvement_per_dollar"
    rows = {row["name"]: row for row in data["queued"]}
    assert rows["promising"]["position"] == 1 and rows["repeat"]["position"] == 2
    assert rows["promising"]["value_per_dollar"] > rows["repeat"]["value_per_dollar"]
    assert rows["promising"]["estimated_cost_usd"] > 0 and "past runs" in rows["promising"]["ordering_basis"]
    page = client.get("/gpus/").content.decode()
    assert "ordered within each class by improvement_per_dollar" in page and "/$" in page
