"""Thin Celery tasks: each takes ids and calls one service."""

from __future__ import annotations

from typing import Any

from celery import shared_task

import control.scheduling.evaluations as evaluations
import control.scheduling.scheduler as scheduler
import control.scheduling.services as services
from control.scheduling.inventory import worker_heartbeat as inventory_heartbeat
from control.scheduling.maintenance import checkpoints_cleanup
from experiments.runs.execution import run_execute


@shared_task(name="control.scheduler_tick", ignore_result=True)
def scheduler_tick() -> int:
    """Dispatch whatever fits on free devices now; return how many runs started."""
    started = len(scheduler.scheduler_tick())
    evaluations.evaluations_dispatch_waiting()
    return started


@shared_task(
    bind=True,
    name="control.evaluate_run",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def evaluate_run(self: Any, evaluation_id: int, device_id: int) -> str:
    """Evaluate a trained run's checkpoint on this worker (sent to its own queue with a leased slot)."""
    return evaluations.evaluation_run_on_lease(
        evaluation_id=evaluation_id, device_id=device_id, worker=str(self.request.hostname)
    )


@shared_task(
    bind=True,
    name="control.train_run",
    acks_late=True,
    # A pool process killed mid-run puts the task back; the database lease then decides
    # whether it trains again (a live heartbeat elsewhere means it does nothing).
    reject_on_worker_lost=True,
    ignore_result=True,
)
def train_run(self: Any, run_id: int) -> str:
    """Train one run on this worker (sent to the worker's own queue by the scheduler)."""
    return run_execute(run_id=run_id, worker=str(self.request.hostname))


@shared_task(bind=True, name="control.worker_heartbeat", ignore_result=True)
def worker_heartbeat(self: Any) -> str:
    """Record the heartbeat and devices of the worker that runs this task."""
    worker, _ = inventory_heartbeat(hostname=str(self.request.hostname))
    return worker.hostname


@shared_task(name="control.watchdog_sweep", ignore_result=True)
def watchdog_sweep() -> dict[str, Any]:
    """Fail and retry lost or overdue runs; free leases of dead workers."""
    report = services.watchdog_sweep()
    evaluations.evaluations_sweep()
    return {
        "workers_offline": report.workers_offline,
        "lost": report.lost,
        "timed_out": report.timed_out,
        "leases_freed": report.leases_freed,
        "clients_lost": report.clients_lost,
    }


@shared_task(name="control.cancel_revoke", ignore_result=True)
def cancel_revoke(run_id: int) -> bool:
    """After the grace period, stop a run that has not honoured its cancel."""
    return services.run_force_stop(run_id=run_id)


@shared_task(name="control.checkpoints_cleanup", queue="control")
def checkpoints_cleanup_task() -> int:
    """Delete checkpoints of ended experiments past retention; return how many."""
    return checkpoints_cleanup()
