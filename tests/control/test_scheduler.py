"""The scheduler: queue order, aging, capacity, device matching and the atomic lease."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone

from control.models import Device, Policy, PolicyKind
from control.policies.authoring import policy_create
from control.scheduling.scheduler import (
    QueuedExperiment,
    device_lease,
    queued_in_order,
    scheduler_plan,
    scheduler_tick,
)
from experiments.choices import RunStatus, State
from experiments.models import Experiment, Run
from experiments.runs.services import run_create
from tests.control.helpers import A10_MB, H100_MB, make_worker, queued

pytestmark = pytest.mark.django_db


def _names(experiments: list[QueuedExperiment]) -> list[str]:
    return [e.name for e in experiments]


def test_the_queue_orders_by_class_then_priority_then_age() -> None:
    queued("batch-5-new", priority_class="batch", priority=5, waited_min=1)
    queued("batch-5-old", priority_class="batch", priority=5, waited_min=3)
    queued("batch-9", priority_class="batch", priority=9)
    queued("offline-10", priority_class="offline", priority=10)
    queued("realtime-0", priority_class="realtime", priority=0)
    queued("interactive-2", priority_class="interactive", priority=2)

    order = _names(queued_in_order(aging_per_minute=0))

    assert order == ["realtime-0", "interactive-2", "batch-9", "batch-5-old", "batch-5-new", "offline-10"]


def test_aging_lets_a_long_waiting_experiment_overtake_newer_urgent_ones() -> None:
    queued("fresh batch 9", priority_class="batch", priority=9, waited_min=0)
    queued("offline waiting 2 h", priority_class="offline", priority=3, waited_min=120)

    assert _names(queued_in_order(aging_per_minute=0)) == ["fresh batch 9", "offline waiting 2 h"]
    # 0.2 points a minute: 120 minutes are worth 24 points, more than a class (11) plus 6.
    assert _names(queued_in_order(aging_per_minute=0.2)) == ["offline waiting 2 h", "fresh batch 9"]


def test_a_tick_leases_a_free_slot_creates_the_run_and_starts_the_experiment() -> None:
    worker = make_worker("w1@host", cpu=1)
    experiment = queued("digits")

    [run] = scheduler_tick()

    experiment.refresh_from_db()
    assert experiment.state == State.RUNNING
    assert run.attempt == 1 and run.status == RunStatus.STARTING
    assert run.worker == worker.hostname and run.device == "cpu"
    assert Device.objects.get(worker=worker).leased_run == run


def test_reserved_devices_are_never_leased() -> None:
    worker = make_worker(
        "w1@host", gpus=[("NVIDIA H100 80GB HBM3", H100_MB), ("NVIDIA H100 80GB HBM3", H100_MB)]
    )
    Device.objects.filter(worker=worker, index=0).update(reserved=True)
    first = queued("one", gpus=1)
    second = queued("two", gpus=1)

    with override_settings(SCHEDULER_RESERVED_DEVICES=["GPU-w1@host-1"]):
        plan = scheduler_plan()
        assert scheduler_tick() == []

    assert [d.reason for d in plan.decisions] == ["waiting for 1 GPU to free up"] * 2
    assert Experiment.objects.filter(pk__in=[first.pk, second.pk], state=State.QUEUED).count() == 2
    assert len(scheduler_tick()) == 1  # without the settings reservation, GPU 1 is free
    assert Device.objects.get(worker=worker, index=0).leased_run is None


def test_the_concurrency_limit_holds_the_rest_in_the_queue_with_a_reason() -> None:
    make_worker("w1@host", cpu=3)
    queued("a", priority=9)
    queued("b", priority=5)
    queued("c", priority=1)

    started = scheduler_tick(max_concurrent=2)
    plan = scheduler_plan(max_concurrent=2)

    assert sorted(r.experiment.name for r in started) == ["a", "b"]
    [waiting] = plan.decisions
    assert waiting.experiment.name == "c"
    assert waiting.reason == "max concurrent runs reached (2/2)"
    assert plan.running == 2 and len(plan.free_devices) == 1


def test_gpu_type_and_memory_pick_the_device_that_fits() -> None:
    make_worker("small@host", gpus=[("NVIDIA A10", A10_MB)])
    big = make_worker("big@host", gpus=[("NVIDIA H100 80GB HBM3", H100_MB)])
    needs_h100 = queued("needs h100", gpus=1, gpu_type="H100", memory_gb=40, priority=9)
    needs_a100 = queued("needs a100", gpus=1, gpu_type="A100", priority=5)
    needs_memory = queued("needs 30 GiB", gpus=1, memory_gb=30, priority=1)

    plan = scheduler_plan()
    by_name = {d.experiment.name: d for d in plan.decisions}

    assert [d.worker_id for d in by_name[needs_h100.name].devices] == [big.pk]
    assert by_name[needs_a100.name].reason == "no live worker has 1 GPU of type A100"
    # The only GPU with 30 GiB went to the more urgent experiment; the A10 is too small.
    assert by_name[needs_memory.name].reason == "waiting for 1 GPU with ≥ 30 GiB to free up"
    [run] = scheduler_tick()
    assert run.experiment_id == needs_h100.pk and run.device == "cuda:0"


def test_a_cpu_experiment_never_takes_a_gpu_and_a_dead_worker_is_not_used() -> None:
    make_worker("gpu@host", gpus=[("NVIDIA H100 80GB HBM3", H100_MB)])
    dead = make_worker("dead@host", cpu=1)
    dead.last_heartbeat = timezone.now() - timedelta(minutes=10)
    dead.save()
    queued("cpu job")

    assert scheduler_tick() == []
    [decision] = scheduler_plan().decisions
    assert decision.reason == "no live worker has a CPU slot"


def test_retry_backoff_keeps_an_experiment_waiting_until_not_before() -> None:
    make_worker("w1@host", cpu=1)
    experiment = queued("backing off")
    Experiment.objects.filter(pk=experiment.pk).update(not_before=timezone.now() + timedelta(seconds=60))

    assert scheduler_tick() == []
    assert scheduler_plan().decisions[0].reason.startswith("retry backoff until ")
    Experiment.objects.filter(pk=experiment.pk).update(not_before=timezone.now() - timedelta(seconds=1))
    assert len(scheduler_tick()) == 1


@pytest.mark.django_db(transaction=True)
def test_two_schedulers_racing_for_one_device_lease_it_once() -> None:
    worker = make_worker("w1@host", cpu=1)
    device = Device.objects.get(worker=worker)
    experiments = [queued(f"racer {i}") for i in range(2)]
    runs = [
        run_create(experiment=e, worker=worker.hostname, device="cpu", task_id=f"t{i}")
        for i, e in enumerate(experiments)
    ]
    barrier = threading.Barrier(2)
    results: dict[int, bool] = {}

    def lease(run: Run) -> None:
        try:
            barrier.wait(5)
            with transaction.atomic():
                results[run.pk] = device_lease(device_ids=[device.pk], run=run)
        finally:
            connection.close()

    threads = [threading.Thread(target=lease, args=(run,)) for run in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    assert sorted(results.values()) == [False, True]
    device.refresh_from_db()
    assert device.leased_run_id is not None and results[device.leased_run_id] is True


@pytest.mark.django_db(transaction=True)
def test_concurrent_ticks_start_an_experiment_once() -> None:
    make_worker("w1@host", cpu=2)
    experiment = queued("only one attempt")
    barrier = threading.Barrier(3)
    started: list[int] = []

    def tick() -> None:
        try:
            barrier.wait(5)
            started.extend(r.pk for r in scheduler_tick())
        finally:
            connection.close()

    threads = [threading.Thread(target=tick) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    assert len(started) == 1
    assert Run.objects.filter(experiment=experiment).count() == 1
    assert Device.objects.filter(leased_run__isnull=False).count() == 1


def test_a_cost_policy_cap_of_zero_holds_the_queue_until_it_is_disabled() -> None:
    make_worker("w1@host", cpu=2)
    queued("over budget")

    policy = policy_create(name="no-runs", kind=PolicyKind.COST, max_concurrent_runs=0)
    assert scheduler_tick() == []
    assert scheduler_plan().decisions[0].reason == "max concurrent runs reached (0/0)"
    Policy.objects.filter(pk=policy.pk).update(enabled=False)
    assert len(scheduler_tick()) == 1


def test_a_tick_plans_only_until_the_free_devices_run_out_and_places_as_the_full_plan_does() -> None:
    make_worker("small@host", gpus=[("NVIDIA A10", A10_MB)])
    make_worker("big@host", gpus=[("NVIDIA H100 80GB HBM3", H100_MB), ("NVIDIA H100 80GB HBM3", H100_MB)])
    for i in range(6):
        queued(f"job {i}", gpus=1, memory_gb=30 if i % 2 else 0, priority=10 - i)

    full = scheduler_plan()
    placed = scheduler_plan(placements_only=True)

    placements = [(d.experiment.pk, [x.pk for x in d.devices]) for d in full.decisions if d.devices]
    assert [(d.experiment.pk, [x.pk for x in d.devices]) for d in placed.decisions if d.devices] == placements
    assert len(placements) == 3 and len(full.decisions) == 6
    # Nothing is decided after the last free device went: the rest is the queue page's business.
    assert len(placed.decisions) < len(full.decisions)
    assert placed.decisions[-1].devices
