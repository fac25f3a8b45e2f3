"""Writes of the run lifecycle: create, start, heartbeat, checkpoint, finish, fail, interrupt, cancel, retry.

A failure is the training's own fault (an exception, a timeout) and spends one of the
experiment's max_attempts; an interruption is the platform's (a worker shut down or lost, an
outage) and requeues the experiment without spending one, up to INTERRUPTIONS_PER_HOUR_MAX.

Experiment transitions go only through `experiments.services.experiment_transition`, with
the system component (scheduler, worker, watchdog) as the audited actor.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from experiments.actors import Actor
from experiments.choices import LIVE_RUN_STATUSES, Interruption, RunStatus, State
from experiments.effects import run_ended_effects_run
from experiments.models import Experiment, Run
from experiments.runs.reporting import finite_or_none
from experiments.services import TransitionRefused, experiment_transition

logger = logging.getLogger(__name__)


def run_create(*, experiment: Experiment, worker: str, device: str, task_id: str) -> Run:
    """Create the next attempt of an experiment (status starting); the caller holds a transaction."""
    [run] = runs_create_many([RunStart(experiment=experiment, worker=worker, device=device, task_id=task_id)])
    return run


@dataclass(frozen=True)
class RunStart:
    """A run to create: the experiment, where it trains and the task that carries it."""

    experiment: Experiment
    worker: str
    device: str
    task_id: str


def runs_next_attempts(experiment_ids: Sequence[int]) -> dict[int, int]:
    """Return each experiment's next attempt number (one query for all)."""
    last = dict(
        Run.objects.filter(experiment_id__in=list(experiment_ids))
        .order_by()
        .values("experiment_id")
        .annotate(n=Max("attempt"))
        .values_list("experiment_id", "n")
    )
    return {pk: (last.get(pk) or 0) + 1 for pk in experiment_ids}


def runs_create_many(starts: Sequence[RunStart], *, attempts: Mapping[int, int] | None = None) -> list[Run]:
    """Create the next attempt of each experiment (status starting) in one insert; the caller holds a transaction.

    attempts: the numbers runs_next_attempts returned in this transaction (read again when None).
    Two writers creating the same attempt collide on the unique (experiment, attempt): IntegrityError.
    """
    if attempts is None:
        attempts = runs_next_attempts([s.experiment.pk for s in starts])
    return Run.objects.bulk_create(
        Run(
            experiment=s.experiment,
            attempt=attempts[s.experiment.pk],
            status=RunStatus.STARTING,
            config=dict(s.experiment.config),
            worker=s.worker,
            device=s.device,
            task_id=s.task_id,
        )
        for s in starts
    )


def heartbeat_is_fresh(run: Run, *, now: datetime | None = None) -> bool:
    """Return True when the run heart-beat within HEARTBEAT_TIMEOUT_SECONDS."""
    now = now or timezone.now()
    beat = run.heartbeat_at or run.started_at
    if beat is None:
        return False
    return (now - beat).total_seconds() < settings.HEARTBEAT_TIMEOUT_SECONDS


def run_start(*, run_id: int, worker: str) -> Run | None:
    """Claim a dispatched run for this worker; return it, or None when this task must not train.

    The claim is a conditional update (starting → running), so a task delivered twice
    (broker redelivery after a lost ack) trains once. A redelivered task for a run whose
    heartbeat went stale means its first worker died: the attempt is interrupted and requeued.
    """
    now = timezone.now()
    claimed = Run.objects.filter(
        pk=run_id,
        status=RunStatus.STARTING,
        cancel_requested_at__isnull=True,
        experiment__state=State.RUNNING,
    ).update(status=RunStatus.RUNNING, worker=worker, started_at=now, heartbeat_at=now)
    run = Run.objects.select_related("experiment").filter(pk=run_id).first()
    if run is None:
        return None
    if claimed == 1:
        return run
    if run.status == RunStatus.STARTING:
        # Cancelled (or the experiment moved on) before any worker began.
        run_end(run_id=run.pk, status=RunStatus.CANCELLED, error="stopped before it started")
    elif run.status == RunStatus.RUNNING and not heartbeat_is_fresh(run, now=now):
        run_interrupt(
            run_id=run.pk,
            cause=Interruption.WORKER_LOST,
            error="the worker training this run was lost (task delivered again)",
            component="worker",
        )
    else:
        logger.info(
            "run %s is already %s (held by %s); duplicate task ignored", run.pk, run.status, run.worker
        )
    return None


def run_heartbeat(*, run_id: int, progress: float, eta_seconds: float | None, last_step: int) -> bool:
    """Record that the run is alive and how far it is; return False once it is no longer running."""
    return (
        Run.objects.filter(pk=run_id, status=RunStatus.RUNNING).update(
            heartbeat_at=timezone.now(),
            progress=max(0.0, min(1.0, progress)),
            eta_seconds=eta_seconds,
            last_step=last_step,
        )
        == 1
    )


def run_record_checkpoint(*, run_id: int, path: str, sha256: str, size: int, step: int) -> None:
    """Record the run's newest checkpoint file with its digest and size."""
    Run.objects.filter(pk=run_id).update(
        checkpoint_path=path, checkpoint_sha256=sha256, checkpoint_size=size, checkpoint_step=step
    )


def run_record_resume(*, run_id: int, step: int) -> None:
    """Record the checkpoint step this attempt resumed from."""
    Run.objects.filter(pk=run_id).update(resumed_from_step=step)


def run_request_cancel(*, experiment_id: int) -> list[Run]:
    """Ask the experiment's live runs to stop (the training loop looks within a second)."""
    now = timezone.now()
    runs = list(Run.objects.filter(experiment_id=experiment_id, status__in=LIVE_RUN_STATUSES))
    Run.objects.filter(pk__in=[r.pk for r in runs], cancel_requested_at__isnull=True).update(
        cancel_requested_at=now
    )
    return runs


def _json_metrics(metrics: dict[str, Any]) -> dict[str, float | None]:
    return {str(k): finite_or_none(v) for k, v in metrics.items()}


@transaction.atomic
def run_end(
    *,
    run_id: int,
    status: str,
    error: str = "",
    traceback: str = "",
    final_metrics: dict[str, Any] | None = None,
    progress: float | None = None,
    last_step: int | None = None,
    interruption: str = "",
) -> bool:
    """Move a live run to a final status and release what it held; return False if it had ended."""
    values: dict[str, Any] = {
        "status": status,
        "finished_at": timezone.now(),
        "error": error[:10_000],
        "interruption": interruption,
    }
    if progress is not None:
        values["progress"] = max(0.0, min(1.0, progress))
        values["eta_seconds"] = None
    if last_step is not None:
        values["last_step"] = last_step
    if traceback:
        values["traceback"] = traceback
    if final_metrics is not None:
        values["final_metrics"] = _json_metrics(final_metrics)
    if Run.objects.filter(pk=run_id, status__in=LIVE_RUN_STATUSES).update(**values) != 1:
        return False
    run_ended_effects_run(Run.objects.get(pk=run_id))
    return True


def _is_current_attempt(run: Run) -> bool:
    latest = Run.objects.filter(experiment_id=run.experiment_id).aggregate(n=Max("attempt"))["n"]
    return latest == run.attempt


def run_succeed(
    *, run_id: int, final_metrics: dict[str, Any], last_step: int | None = None, component: str = "worker"
) -> bool:
    """Finish a run that trained to the end and move its experiment to evaluating."""
    with transaction.atomic():
        if not run_end(
            run_id=run_id,
            status=RunStatus.SUCCEEDED,
            final_metrics=final_metrics,
            progress=1.0,
            last_step=last_step,
        ):
            return False
        run = Run.objects.select_related("experiment").get(pk=run_id)
        if run.experiment.state == State.RUNNING and _is_current_attempt(run):
            try:
                experiment_transition(
                    experiment_id=run.experiment_id,
                    event="complete",
                    actor=Actor.system(component),
                    reason=f"attempt {run.attempt} finished training",
                )
            except TransitionRefused as exc:  # cancelled or requeued at the last moment
                logger.info("run %s succeeded but %s", run_id, exc.message)
    return True


def retry_backoff_seconds(failures: int) -> float:
    """Return the wait before the next attempt: exponential in the failures so far, capped."""
    base = settings.RETRY_BACKOFF_SECONDS * (2 ** max(0, failures - 1))
    return float(min(settings.RETRY_BACKOFF_MAX_SECONDS, base))


def run_fail(
    *,
    run_id: int,
    error: str,
    traceback: str = "",
    status: str = RunStatus.FAILED,
    component: str = "worker",
    retry: bool = True,
) -> bool:
    """Fail a run (exception, timeout), fail its experiment and retry it if attempts remain.

    Retry waits an exponential backoff (the experiment's not_before) and resumes from the
    newest checkpoint. Return False when the run had already ended.
    """
    actor = Actor.system(component)
    with transaction.atomic():
        if not run_end(run_id=run_id, status=status, error=error, traceback=traceback):
            return False
        run = Run.objects.select_related("experiment").get(pk=run_id)
        experiment = run.experiment
        if experiment.state != State.RUNNING or not _is_current_attempt(run):
            return True  # the experiment has moved on (cancelled, requeued): nothing to fail
        try:
            experiment_transition(
                experiment_id=experiment.pk,
                event="fail",
                actor=actor,
                reason=f"attempt {run.attempt}: {error.splitlines()[0] if error else status}"[:500],
            )
        except TransitionRefused as exc:
            logger.info("run %s failed but %s", run_id, exc.message)
            return True
        if retry:
            experiment_retry_with_backoff(experiment_id=experiment.pk, actor=actor)
    return True


def run_interrupt(
    *,
    run_id: int,
    cause: str,
    error: str,
    component: str,
    progress: float | None = None,
    last_step: int | None = None,
    final_metrics: dict[str, Any] | None = None,
) -> bool:
    """End a run the platform took away and requeue its experiment without spending an attempt.

    Past INTERRUPTIONS_PER_HOUR_MAX interruptions within the hour the experiment fails instead
    (something keeps taking its runs away; retrying by itself would loop). Return False when
    the run had already ended.
    """
    actor = Actor.system(component)
    label = Interruption(cause).label
    with transaction.atomic():
        if not run_end(
            run_id=run_id,
            status=RunStatus.INTERRUPTED,
            error=error,
            interruption=cause,
            progress=progress,
            last_step=last_step,
            final_metrics=final_metrics,
        ):
            return False
        run = Run.objects.select_related("experiment").get(pk=run_id)
        experiment = run.experiment
        if experiment.state != State.RUNNING or not _is_current_attempt(run):
            return True  # the experiment has moved on (cancelled, requeued): nothing to requeue
        recent = experiment.interruptions_last_hour()
        cap = experiment.interruption_cap
        what = f"attempt {run.attempt} interrupted ({label}): {error.splitlines()[0] if error else cause}"
        try:
            if recent > cap:
                experiment_transition(
                    experiment_id=experiment.pk,
                    event="fail",
                    actor=actor,
                    reason=(
                        f"{what}; {recent} interruptions in the last hour exceed the cap of {cap} "
                        "(INTERRUPTIONS_PER_HOUR_MAX): check the workers, then retry"
                    )[:2000],
                )
            else:
                experiment_transition(
                    experiment_id=experiment.pk,
                    event="requeue",
                    actor=actor,
                    reason=(
                        f"{what}; requeued without spending an attempt "
                        f"({recent} of {cap} interruptions allowed in the last hour)"
                    )[:2000],
                )
        except TransitionRefused as exc:
            logger.info("run %s interrupted but %s", run_id, exc.message)
    return True


def experiment_failures(*, experiment_id: int) -> int:
    """Return how many attempts of the experiment failed in their training (interruptions do not count)."""
    return Run.objects.filter(experiment_id=experiment_id, status=RunStatus.FAILED).count()


def experiment_retry_with_backoff(*, experiment_id: int, actor: Actor) -> bool:
    """Queue a failed experiment again after a backoff when it has attempts left; return whether it did."""
    experiment = Experiment.objects.get(pk=experiment_id)
    failures = experiment_failures(experiment_id=experiment_id)
    if experiment.state != State.FAILED or failures >= experiment.max_attempts:
        return False
    wait = retry_backoff_seconds(failures)
    not_before = timezone.now() + timedelta(seconds=wait)
    with transaction.atomic():
        # not_before is plain data (not the protected state): set it before the transition saves.
        Experiment.objects.filter(pk=experiment_id).update(not_before=not_before)
        experiment_transition(
            experiment_id=experiment_id,
            event="retry",
            actor=actor,
            reason=f"attempt {failures + 1} of {experiment.max_attempts} after {wait:.1f} s backoff",
        )
    return True
