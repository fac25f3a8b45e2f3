"""Placement: an experiment's CPU cores and host memory must fit a worker's host, and the queue says what is missing."""

from __future__ import annotations

import pytest

from control.models import Worker
from control.scheduling.inventory import Inventory, worker_heartbeat
from control.scheduling.scheduler import scheduler_plan, scheduler_tick
from experiments.choices import State
from experiments.recipes import RECIPES
from experiments.services import experiment_create
from tests.control.helpers import make_worker, queued

pytestmark = pytest.mark.django_db


def _host(hostname: str, *, slots: int, cores: int, memory_gb: float) -> Worker:
    worker = make_worker(hostname, cpu=slots)
    Worker.objects.filter(pk=worker.pk).update(cpu_cores=cores, memory_total_mb=int(memory_gb * 1024))
    worker.refresh_from_db()
    return worker


def _reasons() -> dict[str, str]:
    return {d.experiment.name: d.reason for d in scheduler_plan().decisions}


def test_an_experiment_goes_to_the_worker_whose_host_has_the_memory() -> None:
    _host("small", slots=2, cores=8, memory_gb=4)
    big = _host("big", slots=2, cores=8, memory_gb=64)
    queued("needs 16 GiB", host_memory_gb=16.0)
    [run] = scheduler_tick()
    assert run.worker == big.hostname


def test_the_queue_says_which_resource_is_missing_and_the_best_offer() -> None:
    _host("w1", slots=4, cores=16, memory_gb=4)
    _host("w2", slots=4, cores=16, memory_gb=3)
    queued("memory hungry", host_memory_gb=8.0)
    assert (
        _reasons()["memory hungry"]
        == "no live worker has room: needs 8 GiB host memory; largest: 4 GiB on w1"
    )


def test_what_running_work_holds_is_not_free_and_the_reason_names_what_is_left() -> None:
    _host("w1", slots=4, cores=4, memory_gb=8)
    queued("first", host_memory_gb=6.0, waited_min=5)
    queued("second", host_memory_gb=4.0)
    [run] = scheduler_tick()
    assert run.experiment.name == "first"
    assert _reasons()["second"] == "needs 4 GiB host memory; largest free: 2 GiB on w1"


def test_cores_are_counted_within_one_pass() -> None:
    _host("w1", slots=4, cores=4, memory_gb=64)
    queued("a", cpu_cores=3, waited_min=2)
    queued("b", cpu_cores=2, waited_min=1)
    queued("c", cpu_cores=1)
    plan = scheduler_plan()
    placed = {d.experiment.name: bool(d.devices) for d in plan.decisions}
    assert placed == {"a": True, "b": False, "c": True}
    assert {d.experiment.name: d.reason for d in plan.decisions}["b"] == (
        "needs 2 CPU cores; most free: 1 on w1"
    )


def test_a_worker_that_reports_no_host_figures_is_not_constrained() -> None:
    make_worker("legacy", cpu=1)
    experiment = queued("anything", cpu_cores=64, host_memory_gb=512.0)
    [run] = scheduler_tick()
    experiment.refresh_from_db()
    assert run.experiment_id == experiment.pk and experiment.state == State.RUNNING


def test_the_heartbeat_records_cores_and_memory() -> None:
    worker, _ = worker_heartbeat(hostname="hb@host", inventory=Inventory(cpu_cores=12, memory_total_mb=32768))
    assert (worker.cpu_cores, worker.memory_total_gb) == (12, 32.0)


def test_a_new_experiment_takes_its_recipe_resources_unless_given() -> None:
    default = experiment_create(name="lm", recipe="charlm")
    assert (default.cpu_cores, default.host_memory_gb) == (
        RECIPES["charlm"].resources.cpu_cores,
        RECIPES["charlm"].resources.host_memory_gb,
    )
    assert (default.cpu_cores, default.host_memory_gb) == (2, 2.0)
    given = experiment_create(name="lm big", recipe="charlm", cpu_cores=6, host_memory_gb=12.0)
    assert (given.cpu_cores, given.host_memory_gb) == (6, 12.0)
