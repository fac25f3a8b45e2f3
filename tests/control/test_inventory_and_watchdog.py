"""Worker inventory without NVML, offline workers, the watchdog and duplicate task deliveries."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client, override_settings
from django.utils import timezone

from control.models import Device, DeviceKind, Worker
from control.scheduling.inventory import GpuReading, Inventory, read_gpus, worker_heartbeat
from control.scheduling.scheduler import scheduler_tick
from control.scheduling.services import run_force_stop, watchdog_sweep, worker_runs_interrupt_stale
from experiments.actors import Actor
from experiments.choices import Interruption, RunStatus, State
from experiments.models import Run
from experiments.runs.services import run_fail, run_interrupt, run_start
from experiments.services import experiment_transition
from tests.control.helpers import make_worker, queued

pytestmark = pytest.mark.django_db


def test_a_worker_without_nvml_registers_a_cpu_slot_and_says_why() -> None:
    inventory = read_gpus()
    if inventory.gpus:
        pytest.skip("this host has NVML GPUs")

    worker, came_online = worker_heartbeat(hostname="cpu-only@host")

    assert came_online
    assert "NVML" in worker.nvml_error or "nvml" in worker.nvml_error.lower()
    [slot] = worker.devices.all()
    assert slot.kind == DeviceKind.CPU and slot.label == "cpu"
    assert worker.queue == "cpu-only@host.dq2"


@override_settings(WORKER_CPU_SLOTS=3)
def test_the_number_of_cpu_slots_is_configurable_and_heartbeats_update_in_place() -> None:
    worker_heartbeat(hostname="w@host", inventory=Inventory(nvml_error="NVMLError_LibraryNotFound"))
    _, came_online = worker_heartbeat(
        hostname="w@host", inventory=Inventory(nvml_error="NVMLError_LibraryNotFound")
    )

    assert not came_online
    assert Device.objects.filter(worker__hostname="w@host", kind=DeviceKind.CPU).count() == 3


def test_gpu_readings_are_recorded_per_device() -> None:
    reading = GpuReading(
        index=0, name="NVIDIA H100 80GB HBM3", uuid="GPU-1", memory_total_mb=81559, memory_used_mb=512,
        utilization_pct=37.0, temperature_c=41.0, power_w=118.5,
    )  # fmt: skip
    worker_heartbeat(hostname="gpu@host", inventory=Inventory(gpus=[reading]))

    [gpu] = Device.objects.filter(worker__hostname="gpu@host")
    assert (gpu.kind, gpu.name, gpu.uuid, gpu.memory_used_mb) == (
        "gpu",
        "NVIDIA H100 80GB HBM3",
        "GPU-1",
        512,
    )
    assert (gpu.utilization_pct, gpu.temperature_c, gpu.power_w) == (37.0, 41.0, 118.5)


@override_settings(RETRY_BACKOFF_SECONDS=30)
def test_a_worker_that_stops_beating_goes_offline_and_its_run_is_requeued_without_spending_an_attempt() -> (
    None
):
    worker = make_worker("w1@host", cpu=1)
    experiment = queued("lost one")
    [run] = scheduler_tick()
    assert run_start(run_id=run.pk, worker=worker.hostname) is not None
    long_ago = timezone.now() - timedelta(minutes=5)
    Worker.objects.filter(pk=worker.pk).update(last_heartbeat=long_ago)
    Run.objects.filter(pk=run.pk).update(heartbeat_at=long_ago)

    report = watchdog_sweep()

    worker.refresh_from_db()
    run.refresh_from_db()
    experiment.refresh_from_db()
    assert report.workers_offline == [worker.pk] and report.lost == [run.pk]
    assert not worker.online
    assert run.status == RunStatus.INTERRUPTED and run.interruption == Interruption.WORKER_LOST
    assert "no heartbeat" in run.error
    assert experiment.state == State.QUEUED
    assert experiment.not_before is None  # no backoff: nothing was wrong with the run itself
    assert experiment.attempts_spent() == 0 and experiment.interruptions_last_hour() == 1
    assert not Device.objects.filter(leased_run__isnull=False).exists()
    requeue = experiment.transitions.last()
    assert [t.event for t in experiment.transitions.all()] == ["queue", "start", "requeue"]
    assert requeue is not None and requeue.actor == "system:watchdog"
    assert "interrupted (worker lost)" in requeue.reason and "without spending an attempt" in requeue.reason


def _lose_the_run(worker: Worker) -> Run:
    [run] = scheduler_tick()
    run_start(run_id=run.pk, worker=worker.hostname)
    Run.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    watchdog_sweep()
    run.refresh_from_db()
    return run


def test_interruptions_do_not_spend_attempts_but_failures_still_stop_at_max_attempts() -> None:
    worker = make_worker("w1@host", cpu=1)
    experiment = queued("flaky platform", max_attempts=1)
    for _ in range(3):
        assert _lose_the_run(worker).status == RunStatus.INTERRUPTED
        experiment.refresh_from_db()
        assert experiment.state == State.QUEUED
    [run] = scheduler_tick()
    run_start(run_id=run.pk, worker=worker.hostname)

    run_fail(run_id=run.pk, error="ValueError: a bug in the training")

    experiment.refresh_from_db()
    assert experiment.state == State.FAILED  # max_attempts=1: the one real failure spends it
    assert experiment.attempts_spent() == 1 and experiment.interruptions_last_hour() == 3


@override_settings(INTERRUPTIONS_PER_HOUR_MAX=2)
def test_past_the_hourly_cap_of_interruptions_the_experiment_fails_with_the_reason() -> None:
    worker = make_worker("w1@host", cpu=1)
    experiment = queued("runaway", max_attempts=5)
    for _ in range(2):
        _lose_the_run(worker)
        experiment.refresh_from_db()
        assert experiment.state == State.QUEUED

    _lose_the_run(worker)

    experiment.refresh_from_db()
    assert experiment.state == State.FAILED
    last = experiment.transitions.last()
    assert last is not None and last.event == "fail" and last.actor == "system:watchdog"
    assert "3 interruptions in the last hour exceed the cap of 2" in last.reason
    assert experiment.attempts_spent() == 0
    assert Run.objects.filter(experiment=experiment, status=RunStatus.INTERRUPTED).count() == 3


def test_interruptions_older_than_an_hour_do_not_count_towards_the_cap() -> None:
    worker = make_worker("w1@host", cpu=1)
    experiment = queued("old trouble")
    first = _lose_the_run(worker)
    Run.objects.filter(pk=first.pk).update(finished_at=timezone.now() - timedelta(minutes=61))

    assert experiment.interruptions_last_hour() == 0


def test_a_run_never_started_by_a_worker_is_interrupted_as_an_expired_lease() -> None:
    make_worker("w1@host", cpu=1)
    experiment = queued("never picked up")
    [run] = scheduler_tick()
    Run.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(minutes=10))

    watchdog_sweep()

    run.refresh_from_db()
    experiment.refresh_from_db()
    assert run.status == RunStatus.INTERRUPTED and run.interruption == Interruption.NOT_STARTED
    assert experiment.state == State.QUEUED and experiment.attempts_spent() == 0


def test_a_stopping_worker_gets_no_new_run_until_it_starts_again() -> None:
    worker = make_worker("w1@host", cpu=1)
    worker_heartbeat(hostname=worker.hostname, inventory=Inventory(nvml_error="none"), stopping=True)
    queued("waits")

    assert scheduler_tick() == []

    worker_heartbeat(hostname=worker.hostname, inventory=Inventory(nvml_error="none"))
    assert len(scheduler_tick()) == 1


def test_a_run_interrupted_by_its_worker_stopping_marks_that_worker_stopping() -> None:
    worker = make_worker("w1@host", cpu=1)
    experiment = queued("checkpointed on stop")
    [run] = scheduler_tick()
    run_start(run_id=run.pk, worker=worker.hostname)

    run_interrupt(
        run_id=run.pk, cause=Interruption.SHUTDOWN, error="the worker is shutting down", component="worker"
    )

    worker.refresh_from_db()
    experiment.refresh_from_db()
    assert worker.stopping_since is not None
    assert experiment.state == State.QUEUED
    assert scheduler_tick() == []  # the requeued run is not handed back to the stopping worker


def test_a_task_delivered_twice_does_nothing_while_the_run_heart_beats() -> None:
    worker = make_worker("w1@host", cpu=1)
    queued("once")
    [run] = scheduler_tick()
    assert run_start(run_id=run.pk, worker=worker.hostname) is not None

    assert run_start(run_id=run.pk, worker="other@host") is None

    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING and run.worker == worker.hostname


def test_a_task_delivered_again_after_its_worker_died_interrupts_the_attempt_for_a_requeue() -> None:
    worker = make_worker("w1@host", cpu=1)
    experiment = queued("redelivered")
    [run] = scheduler_tick()
    run_start(run_id=run.pk, worker=worker.hostname)
    Run.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=5))

    assert run_start(run_id=run.pk, worker=worker.hostname) is None

    run.refresh_from_db()
    experiment.refresh_from_db()
    assert run.status == RunStatus.INTERRUPTED and run.interruption == Interruption.WORKER_LOST
    assert experiment.state == State.QUEUED


def test_the_watchdog_fails_a_run_past_its_timeout() -> None:
    worker = make_worker("w1@host", cpu=1)
    experiment = queued("too slow", timeout_seconds=60, max_attempts=1)
    [run] = scheduler_tick()
    run_start(run_id=run.pk, worker=worker.hostname)
    Run.objects.filter(pk=run.pk).update(started_at=timezone.now() - timedelta(seconds=600))

    report = watchdog_sweep()

    run.refresh_from_db()
    experiment.refresh_from_db()
    assert report.timed_out == [run.pk]
    assert run.status == RunStatus.FAILED and run.error == "timed out after 60 s"
    assert experiment.state == State.FAILED  # max_attempts=1: no retry


def test_a_run_that_ignores_its_cancel_is_stopped_hard_after_the_grace_period() -> None:
    worker = make_worker("w1@host", cpu=1)
    experiment = queued("stubborn")
    [run] = scheduler_tick()
    run_start(run_id=run.pk, worker=worker.hostname)
    experiment_transition(experiment_id=experiment.pk, event="cancel", actor=Actor.system("test"))

    assert run_force_stop(run_id=run.pk) is True

    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED and "grace" in run.error
    assert not Device.objects.filter(leased_run__isnull=False).exists()
    assert run_force_stop(run_id=run.pk) is False  # a second revoke finds nothing to do


def test_a_restarted_worker_interrupts_the_runs_its_killed_process_left_running_at_once() -> None:
    worker = make_worker("w1@host", cpu=2)
    left_behind = queued("left behind")
    other = queued("claimed by the new process")
    [old_run, new_run] = sorted(scheduler_tick(), key=lambda r: r.experiment_id)
    run_start(run_id=old_run.pk, worker=worker.hostname)
    restarted_at = timezone.now()
    Run.objects.filter(pk=old_run.pk).update(heartbeat_at=restarted_at - timedelta(seconds=2))
    run_start(run_id=new_run.pk, worker=worker.hostname)  # heart-beats after the restart

    assert worker_runs_interrupt_stale(hostname=worker.hostname, started_at=restarted_at) == [old_run.pk]

    old_run.refresh_from_db()
    new_run.refresh_from_db()
    assert old_run.status == RunStatus.INTERRUPTED and old_run.interruption == Interruption.WORKER_LOST
    assert "restarted" in old_run.error
    assert new_run.status == RunStatus.RUNNING
    left_behind.refresh_from_db()
    other.refresh_from_db()
    assert left_behind.state == State.QUEUED and left_behind.attempts_spent() == 0
    assert other.state == State.RUNNING


@override_settings(INTERRUPTIONS_PER_HOUR_MAX=4)
def test_the_experiment_page_shows_interruptions_against_their_cap_and_attempts_spent(client: Client) -> None:
    worker = make_worker("w1@host", cpu=1)
    experiment = queued("shown", max_attempts=3)
    _lose_the_run(worker)
    _lose_the_run(worker)
    viewer = User.objects.create_user("ada", password="pw-for-tests-only")
    viewer.user_permissions.add(Permission.objects.get(codename="view_experiment"))
    client.force_login(viewer)

    page = client.get(experiment.get_absolute_url()).content.decode()

    assert "2 in the last hour, cap 4" in page
    assert "0 of 3 spent" in page
    assert page.count("Interrupted") >= 2 and "(worker lost)" in page
