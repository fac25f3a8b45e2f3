"""A scheduler pass dispatches its runs as one batch, with every guarantee of one-by-one dispatch."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import redis
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.db import connection, transaction

from control.models import Device
from control.scheduling.scheduler import experiments_dispatch, scheduler_plan, scheduler_tick
from experiments.actors import Actor
from experiments.choices import RunStatus, State
from experiments.effects import Transitioned, effects_install, effects_installed
from experiments.events import FLEET_GROUP
from experiments.models import Experiment, Run, TransitionLog
from experiments.services import experiment_transition
from tests.control.helpers import H100_MB, make_worker, queued

pytestmark = pytest.mark.django_db


def _plan_pairs() -> list[tuple[int, list[Device]]]:
    return [(d.experiment.pk, d.devices) for d in scheduler_plan().decisions if d.devices]


def test_a_pass_starts_every_run_with_its_own_audit_row_and_attempt() -> None:
    make_worker("w1@host", cpu=2)
    make_worker("w2@host", cpu=1)
    experiments = [queued(f"batch {i}", priority=9 - i) for i in range(4)]
    # The first already ran once: its next attempt is 2.
    Run.objects.create(experiment=experiments[0], attempt=1, status=RunStatus.FAILED)

    runs = scheduler_tick()

    assert len(runs) == 3  # three slots, four experiments
    by_experiment = {run.experiment_id: run for run in runs}
    assert by_experiment[experiments[0].pk].attempt == 2
    assert Experiment.objects.get(pk=experiments[3].pk).state == State.QUEUED
    for experiment in experiments[:3]:
        run = by_experiment[experiment.pk]
        assert Experiment.objects.get(pk=experiment.pk).state == State.RUNNING
        assert run.status == RunStatus.STARTING and run.task_id
        [device] = Device.objects.filter(leased_run=run)
        [log] = TransitionLog.objects.filter(experiment=experiment, event="start")
        assert (log.source_state, log.target_state, log.actor) == ("queued", "running", "system:scheduler")
        assert log.reason == f"attempt {run.attempt} on {device.worker.hostname} ({device.label})"
    assert Device.objects.filter(leased_run__isnull=False).count() == 3


def test_a_multi_gpu_run_leases_all_its_devices_in_the_batch() -> None:
    make_worker("pair@host", gpus=[("NVIDIA H100 80GB HBM3", H100_MB)] * 2)
    make_worker("one@host", gpus=[("NVIDIA H100 80GB HBM3", H100_MB)])
    wide = queued("wide", gpus=2, priority=9)
    narrow = queued("narrow", gpus=1, priority=1)

    runs = {run.experiment_id: run for run in scheduler_tick()}

    assert sorted(Device.objects.filter(leased_run=runs[wide.pk]).values_list("index", flat=True)) == [0, 1]
    assert Device.objects.filter(leased_run=runs[narrow.pk]).count() == 1
    [log] = TransitionLog.objects.filter(experiment=wide, event="start")
    assert log.reason == "attempt 1 on pair@host (cuda:0, cuda:1)"


def test_an_experiment_cancelled_after_the_plan_is_skipped_and_the_rest_start() -> None:
    make_worker("w1@host", cpu=3)
    experiments = [queued(f"planned {i}", priority=9 - i) for i in range(3)]
    pairs = _plan_pairs()
    experiment_transition(experiment_id=experiments[1].pk, event="cancel", actor=Actor.system("test"))

    runs = experiments_dispatch(pairs)

    assert sorted(r.experiment_id for r in runs) == [experiments[0].pk, experiments[2].pk]
    assert Experiment.objects.get(pk=experiments[1].pk).state == State.CANCELLED
    assert not Run.objects.filter(experiment=experiments[1]).exists()
    assert not TransitionLog.objects.filter(experiment=experiments[1], event="start").exists()
    assert Device.objects.filter(leased_run__isnull=False).count() == 2


def test_an_experiment_started_by_someone_else_is_not_started_twice() -> None:
    make_worker("w1@host", cpu=2)
    experiments = [queued(f"planned {i}", priority=9 - i) for i in range(2)]
    pairs = _plan_pairs()
    assert experiments_dispatch(pairs[:1])  # another scheduler got there first with the first pair

    runs = experiments_dispatch(pairs)

    assert [r.experiment_id for r in runs] == [experiments[1].pk]
    assert Run.objects.filter(experiment=experiments[0]).count() == 1
    assert TransitionLog.objects.filter(experiment=experiments[0], event="start").count() == 1


def test_a_device_taken_after_the_plan_costs_only_its_experiment() -> None:
    worker = make_worker("w1@host", cpu=3)
    experiments = [queued(f"planned {i}", priority=9 - i) for i in range(3)]
    pairs = _plan_pairs()
    # Another scheduler leased the second experiment's device in between.
    taken = pairs[1][1][0]
    other = queued("other")
    thief = Run.objects.create(experiment=other, attempt=1, worker=worker.hostname)
    Device.objects.filter(pk=taken.pk).update(leased_run=thief)

    runs = experiments_dispatch(pairs)

    assert sorted(r.experiment_id for r in runs) == [experiments[0].pk, experiments[2].pk]
    assert Device.objects.get(pk=taken.pk).leased_run_id == thief.pk
    assert Experiment.objects.get(pk=experiments[1].pk).state == State.QUEUED
    assert not Run.objects.filter(experiment=experiments[1]).exists()
    assert TransitionLog.objects.filter(event="start").count() == 2


def test_start_effects_run_for_every_run_after_commit_once_per_effect(
    django_capture_on_commit_callbacks: Any,
) -> None:
    make_worker("w1@host", cpu=3)
    experiments = [queued(f"effects {i}") for i in range(3)]
    single: list[int] = []
    batches: list[list[int]] = []

    def one_at_a_time(done: Transitioned) -> None:
        single.append(done.experiment.pk)

    def batched_single(done: Transitioned) -> None:
        raise AssertionError("the batched form runs instead")

    def batched(dones: list[Transitioned]) -> None:
        batches.append([d.experiment.pk for d in dones])
        assert all(
            (d.event, d.source, d.actor.label) == ("start", "queued", "system:scheduler") for d in dones
        )

    table = effects_installed()
    previous = effects_install(
        type(table)(transitions={"start": (one_at_a_time, batched_single)}, batched={batched_single: batched})
    )
    try:
        with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
            scheduler_tick()
            assert single == [] and batches == []  # nothing before commit
    finally:
        effects_install(previous)
    assert sorted(single) == sorted(e.pk for e in experiments)
    assert len(batches) == 1 and sorted(batches[0]) == sorted(e.pk for e in experiments)


def test_after_commit_each_run_s_train_task_is_on_its_worker_s_queue(
    redis_url: str, django_capture_on_commit_callbacks: Any
) -> None:
    workers = [make_worker(f"send{i}@host", cpu=1) for i in range(3)]
    for i in range(3):
        queued(f"sent {i}")
    client = redis.Redis.from_url(redis_url)
    client.delete(*[w.queue for w in workers])

    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        runs = scheduler_tick()
        assert all(client.llen(w.queue) == 0 for w in workers)  # nothing before commit

    assert len(runs) == 3
    for run in runs:
        worker = next(w for w in workers if w.hostname == run.worker)
        [raw] = client.lrange(worker.queue, 0, -1)
        headers = json.loads(raw)["headers"]
        assert (headers["task"], headers["id"], headers["argsrepr"]) == (
            "control.train_run",
            run.task_id,
            f"({run.pk},)",
        )
    client.delete(*[w.queue for w in workers])


@pytest.mark.django_db(transaction=True)
def test_the_fleet_page_hears_of_every_start_of_a_pass() -> None:
    make_worker("w1@host", cpu=3)
    experiments = [queued(f"told {i}") for i in range(3)]

    async def listen() -> list[dict[str, Any]]:
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(FLEET_GROUP, channel)
        try:
            await sync_to_async(scheduler_tick)()
            return [await layer.receive(channel) for _ in experiments]
        finally:
            await layer.group_discard(FLEET_GROUP, channel)

    messages = async_to_sync(listen)()

    assert sorted(m["experiment_id"] for m in messages) == sorted(e.pk for e in experiments)
    assert {(m["type"], m["event"], m["target"], m["actor"]) for m in messages} == {
        ("state.changed", "start", "running", "system:scheduler")
    }


@pytest.mark.django_db(transaction=True)
def test_racing_schedulers_lease_each_device_once_and_start_each_experiment_once() -> None:
    for w in range(4):
        make_worker(f"w{w}@host", cpu=2)
    experiments = [queued(f"racer {i}", priority=i % 11) for i in range(12)]
    barrier = threading.Barrier(3)
    started: list[int] = []
    errors: list[BaseException] = []

    def tick() -> None:
        try:
            barrier.wait(5)
            started.extend(r.pk for r in scheduler_tick())
        except BaseException as exc:  # reported below: a thread's failure must fail the test
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=tick) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert errors == []
    runs = Run.objects.filter(experiment__in=experiments)
    assert sorted(started) == sorted(runs.values_list("pk", flat=True))
    assert len(started) == 8  # every slot, each once
    assert runs.values("experiment_id").distinct().count() == 8  # no experiment started twice
    leased = list(Device.objects.filter(leased_run__isnull=False).values_list("leased_run_id", flat=True))
    assert sorted(leased) == sorted(started)  # one device per run, one run per device
    assert TransitionLog.objects.filter(event="start").count() == 8
    assert Experiment.objects.filter(state=State.RUNNING).count() == 8
