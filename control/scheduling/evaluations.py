"""Evaluation jobs on workers: leased and dispatched like training, on a slot of the worker.

A trained run's evaluation job (experiments.runs.evaluation) leases one free slot (a CPU slot,
else a GPU where a worker has none), with the same conditional update that leases a slot for
training, to the run it evaluates, preferably on the worker that trained it (its checkpoint
lies there), and goes to that worker's own queue.
The slot is freed when the job ends. A job that finds no free slot waits for the next
scheduler tick; one whose worker went offline is failed by the watchdog (and its experiment
held for review).
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from control.dispatch import task_send
from control.scheduling.models import Device, DeviceKind, Worker
from control.scheduling.scheduler import device_lease, usable_devices
from control.scheduling.services import tick_after_commit
from experiments.choices import RunStatus
from experiments.effects import Transitioned
from experiments.models import EvaluationStatus, RunEvaluation
from experiments.runs.evaluation import (
    run_evaluation_execute,
    run_evaluation_fail,
    run_evaluation_request,
    waiting_evaluations,
)

logger = logging.getLogger(__name__)


def _free_slot(*, prefer_worker: str, now: datetime | None = None) -> Device | None:
    """Return a free slot of a live worker for an evaluation: a CPU slot, the run's own worker first.

    A fleet of GPU workers may report no CPU slots (WORKER_CPU_SLOTS_WITH_GPUS is 0 by default):
    a free GPU is leased then, so that the job never waits for a kind of slot nobody has. The
    evaluation itself runs on the CPU either way.
    """
    free = usable_devices(now=now).filter(leased_run__isnull=True, reserved=False)
    for kind in (DeviceKind.CPU, DeviceKind.GPU):
        of_kind = free.filter(kind=kind)
        slot = of_kind.filter(worker__hostname=prefer_worker).order_by("index").first()
        slot = slot or of_kind.order_by("worker__hostname", "index").first()
        if slot is not None:
            return slot
    return None


def evaluation_dispatch(*, evaluation_id: int, now: datetime | None = None) -> bool:
    """Lease a CPU slot to the evaluated run and send the job to that worker's queue after commit.

    Returns False when the job is not queued any more or no slot is free (the next tick tries again).
    """
    with transaction.atomic():
        evaluation = (
            RunEvaluation.objects.select_related("run")
            .filter(pk=evaluation_id, status=EvaluationStatus.QUEUED)
            .first()
        )
        if evaluation is None:
            return False
        device = _free_slot(prefer_worker=evaluation.run.worker, now=now)
        if device is None or not device_lease(device_ids=[device.pk], run=evaluation.run):
            logger.info("evaluation %s waits for a free CPU slot", evaluation_id)
            return False
        queue, run_id = device.worker.queue, evaluation.run_id
        transaction.on_commit(lambda: _send_or_release(evaluation_id, device.pk, run_id, queue))
    return True


def _send_or_release(evaluation_id: int, device_id: int, run_id: int, queue: str) -> None:
    """Send the job; if the broker is away, free the slot again (the job stays queued for the next tick)."""
    try:
        task_send("control.evaluate_run", args=[evaluation_id, device_id], queue=queue)
    except Exception:
        logger.warning("evaluation %s not sent; its slot is freed", evaluation_id, exc_info=True)
        Device.objects.filter(pk=device_id, leased_run_id=run_id).update(leased_run=None, leased_at=None)


def evaluations_dispatch_waiting(*, now: datetime | None = None) -> int:
    """Dispatch every queued evaluation job that finds a slot; return how many went out."""
    return sum(evaluation_dispatch(evaluation_id=e.pk, now=now) for e in waiting_evaluations())


def evaluation_run_on_lease(*, evaluation_id: int, device_id: int, worker: str) -> str:
    """Run the job on this worker, then free the slot leased to it; return the job's status."""
    device = Device.objects.filter(pk=device_id).first()
    label = f"{device.kind}:{device.index}" if device is not None else "cpu"
    try:
        return run_evaluation_execute(evaluation_id=evaluation_id, worker=worker, device=label)
    finally:
        evaluation = RunEvaluation.objects.filter(pk=evaluation_id).values("run_id").first()
        if evaluation is not None:
            freed = Device.objects.filter(pk=device_id, leased_run_id=evaluation["run_id"]).update(
                leased_run=None, leased_at=None
            )
            if freed:
                tick_after_commit()  # the slot can train again (outside a transaction: at once)


def evaluations_sweep() -> int:
    """Fail running jobs whose worker went offline (their experiments are held); return how many."""
    offline = Worker.objects.filter(online=False).values_list("hostname", flat=True)
    lost = RunEvaluation.objects.filter(status=EvaluationStatus.RUNNING, worker__in=list(offline))
    failed = 0
    for evaluation in lost:
        if run_evaluation_fail(evaluation_id=evaluation.pk, error=f"worker {evaluation.worker} went offline"):
            failed += 1
        Device.objects.filter(leased_run_id=evaluation.run_id).update(leased_run=None, leased_at=None)
    return failed


# --- effect of the complete transition (listed in control/lifecycle.py) ---


def evaluation_request_on_complete(done: Transitioned) -> None:
    """Training finished: create the newest run's evaluation job (if its recipe has an evaluator) and dispatch it."""
    run = done.experiment.runs.filter(status=RunStatus.SUCCEEDED).order_by("-attempt").first()
    if run is None:
        return
    evaluation = run_evaluation_request(run_id=run.pk)
    if evaluation is not None and evaluation.status == EvaluationStatus.QUEUED:
        try:
            evaluation_dispatch(evaluation_id=evaluation.pk, now=timezone.now())
        except Exception:
            # The broker is away: the job stays queued and the next tick sends it.
            logger.warning("evaluation %s not dispatched yet", evaluation.pk, exc_info=True)
