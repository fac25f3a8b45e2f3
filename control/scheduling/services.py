"""Writes of the control layer's execution side: lease release, cancel with hard revoke, the watchdog."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from control.dispatch import task_revoke, task_send
from control.scheduling.inventory import worker_mark_stopping, workers_mark_offline
from control.scheduling.models import Device
from control.scheduling.scheduler import orphan_leases
from experiments.choices import Executor, Interruption, RunStatus, State
from experiments.effects import Transitioned
from experiments.models import Run
from experiments.runs.external import external_runs_sweep
from experiments.runs.services import run_end, run_fail, run_interrupt, run_request_cancel

logger = logging.getLogger(__name__)


def leases_release(*, run_id: int) -> int:
    """Free every device the run leased; return how many."""
    return Device.objects.filter(leased_run_id=run_id).update(leased_run=None, leased_at=None)


def send_tick(*, countdown: float = 0.0) -> None:
    """Ask a worker for a scheduler tick; a broker outage is logged, never raised (beat ticks anyway)."""
    try:
        task_send("control.scheduler_tick", countdown=max(0.0, countdown), retry=False)
    except Exception:
        logger.warning("could not send a scheduler tick; the beat tick will catch up", exc_info=True)


def tick_after_commit(*, countdown: float = 0.0) -> None:
    """Ask for a scheduler tick once the current transaction commits (capacity or work changed)."""
    transaction.on_commit(lambda: send_tick(countdown=countdown))


def hard_revoke(*, task_id: str) -> None:
    """Kill the pool process running the task (after the cooperative grace period ran out)."""
    task_revoke(task_id)


def experiment_request_cancel(*, experiment_id: int) -> list[Run]:
    """Ask the live runs to stop cooperatively, and schedule a hard revoke after the grace period."""
    runs = run_request_cancel(experiment_id=experiment_id)

    def schedule_revoke(run_id: int) -> None:
        try:
            task_send(
                "control.cancel_revoke", args=[run_id], countdown=settings.CANCEL_GRACE_SECONDS, retry=False
            )
        except Exception:  # the watchdog still ends a run that stops heart-beating
            logger.warning("could not schedule the hard revoke of run %s", run_id, exc_info=True)

    for run in runs:
        transaction.on_commit(lambda run_id=run.pk: schedule_revoke(run_id))  # type: ignore[misc]
    return runs


def run_force_stop(*, run_id: int) -> bool:
    """End a run that ignored its cancel past the grace period: revoke its task hard; True if it did."""
    run = Run.objects.filter(pk=run_id).first()
    if run is None or run.status not in (RunStatus.STARTING, RunStatus.RUNNING):
        return False
    if run.task_id:
        try:
            hard_revoke(task_id=run.task_id)
        except Exception:
            logger.warning("hard revoke of run %s failed", run_id, exc_info=True)
    return run_end(
        run_id=run_id, status=RunStatus.CANCELLED, error="stopped hard after the cancel grace period"
    )


@dataclass
class SweepReport:
    """What one watchdog sweep did."""

    workers_offline: list[int] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)
    timed_out: list[int] = field(default_factory=list)
    leases_freed: int = 0
    clients_lost: list[int] = field(default_factory=list)


def watchdog_sweep(*, now: datetime | None = None) -> SweepReport:
    """Interrupt (and requeue) runs whose worker is gone or that never started; fail overdue ones; free stray leases.

    A lost worker is the platform's fault, so its run spends no attempt; a timeout is the run's.
    """
    now = now or timezone.now()
    report = SweepReport(workers_offline=workers_mark_offline(now=now))
    beat_cutoff = now - timedelta(seconds=settings.HEARTBEAT_TIMEOUT_SECONDS)
    start_cutoff = now - timedelta(seconds=settings.RUN_START_TIMEOUT_SECONDS)
    # External runs have no worker and no lease: their client's silence is judged below.
    stale = (
        Run.objects.filter(
            Q(status=RunStatus.RUNNING, heartbeat_at__lt=beat_cutoff)
            | Q(status=RunStatus.STARTING, created_at__lt=start_cutoff)
            | Q(status__in=(RunStatus.STARTING, RunStatus.RUNNING), leased_devices__worker__online=False)
        )
        .exclude(experiment__executor=Executor.EXTERNAL)
        .distinct()
    )
    for run in stale:
        cause = Interruption.WORKER_LOST
        if run.status == RunStatus.STARTING:
            cause, why = Interruption.NOT_STARTED, "no worker started it"
        elif run.heartbeat_at and run.heartbeat_at < beat_cutoff:
            why = f"no heartbeat for {(now - run.heartbeat_at).total_seconds():.0f} s"
        else:
            why = "its worker went offline"
        if run_interrupt(
            run_id=run.pk,
            cause=cause,
            error=f"run lost: {why}",
            component="watchdog",
            progress=run.progress,
            last_step=run.last_step,
        ):
            report.lost.append(run.pk)
            if run.task_id:
                _revoke_quietly(run.task_id)
    # The worker stops a run at its timeout itself; this catches a loop that stopped listening.
    grace = timedelta(seconds=settings.CANCEL_GRACE_SECONDS)
    # An external run's loop is its client's: it is not timed out here (EXTERNAL_RUN_TIMEOUT
    # catches a client that went away).
    overdue = (
        Run.objects.filter(status=RunStatus.RUNNING, experiment__state=State.RUNNING)
        .exclude(experiment__executor=Executor.EXTERNAL)
        .select_related("experiment")
    )
    for run in overdue.filter(started_at__lt=now - grace).only("pk", "started_at", "task_id", "experiment"):
        limit = timedelta(seconds=run.experiment.timeout_seconds) + grace
        if (
            run.started_at
            and now - run.started_at > limit
            and run_fail(
                run_id=run.pk,
                error=f"timed out after {run.experiment.timeout_seconds} s",
                component="watchdog",
            )
        ):
            report.timed_out.append(run.pk)
            if run.task_id:
                _revoke_quietly(run.task_id)
    report.clients_lost = external_runs_sweep(now=now)
    report.leases_freed = orphan_leases().update(leased_run=None, leased_at=None)
    return report


def worker_runs_interrupt_stale(*, hostname: str, started_at: datetime) -> list[int]:
    """Interrupt runs a worker's previous process left running (it was killed); return their ids.

    A worker restarted under the same name knows at once that those runs are gone: their last
    heartbeat is older than this process, so no watchdog timeout needs to pass. Runs still
    starting are left alone: this process may be about to take them from its queue.
    """
    stale = Run.objects.filter(worker=hostname, status=RunStatus.RUNNING, heartbeat_at__lt=started_at)
    interrupted = []
    for run in stale:
        if run_interrupt(
            run_id=run.pk,
            cause=Interruption.WORKER_LOST,
            error="run lost: its worker was restarted",
            component="watchdog",
            progress=run.progress,
            last_step=run.last_step,
        ):
            interrupted.append(run.pk)
    return interrupted


def _revoke_quietly(task_id: str) -> None:
    try:
        hard_revoke(task_id=task_id)
    except Exception:
        logger.warning("revoke of task %s failed", task_id, exc_info=True)


# Used by the admin's reserve toggle.
def device_set_reserved(*, device_id: int, reserved: bool) -> int:
    """Reserve a device (the scheduler skips it) or release the reservation; return rows changed."""
    return Device.objects.filter(pk=device_id).exclude(reserved=reserved).update(reserved=reserved)


# --- effects of lifecycle events on the scheduler (listed in control/lifecycle.py) ---


def scheduler_tick_on_new_work(done: Transitioned) -> None:
    """Work entered the queue: look for a device now, or when its retry backoff ends."""
    wait = 0.0
    if done.experiment.not_before is not None:
        wait = max(0.0, (done.experiment.not_before - timezone.now()).total_seconds())
    send_tick(countdown=wait)


def runs_stop_on_cancel(done: Transitioned) -> None:
    """Ask the experiment's running attempt to stop (cooperatively, then hard after the grace)."""
    with transaction.atomic():
        experiment_request_cancel(experiment_id=done.experiment.pk)


def leases_release_on_run_end(run: Run) -> None:
    """A run ended: free its devices and let the scheduler use them (unless their worker is stopping)."""
    if run.status == RunStatus.INTERRUPTED and run.interruption == Interruption.SHUTDOWN and run.worker:
        # In the transaction that requeues the experiment: the tick that follows must not hand
        # the run straight back to the worker that is shutting down.
        worker_mark_stopping(hostname=run.worker)
    leases_release(run_id=run.pk)
    tick_after_commit()
